'use strict';
// The server's refusals shown to the sender in plain words, with the text
// kept in the box: too_long (caught by the page before sending, and from the
// server when the page's idea of the limit is wrong) and rate_limited. (The
// `unavailable` error is in scenario 5, with Redis really gone.)

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

const MAX = 40;
let node;
let browser;

before(async () => {
  node = await h.startConfab('8-errors', { env: { CONFAB_MAX_MESSAGE_CHARS: String(MAX) } });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const notice = (page) => page.locator('#notice-bar').textContent();
const box = (page) => page.locator('#message-input').inputValue();

test('too long: the counter warns, the page refuses, the text stays', { timeout: 60000 }, async () => {
  const sam = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(sam.page, node.url, 'Sam');
  await h.signIn(bob.page, node.url, 'Bob');
  const input = sam.page.locator('#message-input');

  // The counter appears near the limit and counts characters as the server does
  // (an emoji is one character, though two UTF-16 units).
  assert.equal(await sam.page.locator('#char-count').isVisible(), false);
  await input.fill('🙂'.repeat(MAX - 3));
  await sam.page.locator('#char-count', { hasText: '3 characters left' }).waitFor();
  await input.fill('🙂'.repeat(MAX));
  await sam.page.locator('#char-count', { hasText: '0 characters left' }).waitFor();
  await input.press('Enter');
  await h.waitForMessage(bob.page, '🙂'.repeat(MAX));

  const long = `${'a'.repeat(MAX)} and then some`;
  await input.fill(long);
  await sam.page.locator('#char-count.over', { hasText: '14 characters over the limit' }).waitFor();
  await input.press('Enter');
  assert.equal(await notice(sam.page), `That message is too long (max ${MAX} characters).`);
  assert.equal(await box(sam.page), long, 'the text stays in the box');
  await h.screenshot(sam.page, 'error-too-long');
  // Shortened, it goes.
  await input.fill('short enough');
  assert.equal(await sam.page.locator('#char-count').isVisible(), false);
  await input.press('Enter');
  await h.waitForMessage(bob.page, 'short enough');
  assert.equal(await notice(sam.page), '', 'a successful send clears the notice');
  assert.equal(await bob.page.locator('#messages li.message .text', { hasText: 'and then some' }).count(), 0);
  await sam.context.close();
  await bob.context.close();
});

test("too long, refused by the server: told in plain words, the text comes back", { timeout: 60000 }, async () => {
  const old = await h.newPerson(browser);
  // A page that believes the limit is 2000 (as an old page after a config
  // change would): only the server can refuse.
  await old.context.route(
    (url) => url.pathname === '/',
    async (route) => {
      const response = await route.fetch();
      const body = (await response.text()).replace(`data-max-message-chars="${MAX}"`, 'data-max-message-chars="2000"');
      await route.fulfill({ response, body });
    },
  );
  await h.signIn(old.page, node.url, 'Old Page');
  const long = 'b'.repeat(MAX + 1);
  await h.send(old.page, long);
  await old.page.locator('#notice-bar', { hasText: 'That message is too long' }).waitFor();
  await old.page.waitForFunction((text) => document.getElementById('message-input').value === text, long);
  assert.ok(!(await h.messages(old.page)).some((m) => m.text === long), 'it was not delivered');
  await old.context.close();
});

test('too fast: told to wait, the refused text comes back', { timeout: 60000 }, async () => {
  const fast = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(fast.page, node.url, 'Speedy');
  await h.signIn(bob.page, node.url, 'Bob');
  // Thirty messages in one go through the form (a held-down Enter, a paste
  // bot): the server takes a burst of 20 and refuses the rest.
  await fast.page.evaluate(() => {
    const input = document.getElementById('message-input');
    const form = document.getElementById('composer');
    for (let i = 1; i <= 30; i += 1) {
      input.value = `burst ${i}`;
      form.requestSubmit();
    }
  });
  await fast.page.locator('#notice-bar', { hasText: "You're sending messages too fast. Wait a moment." }).waitFor();
  await h.waitForMessage(bob.page, 'burst 20');
  const kept = await box(fast.page);
  assert.match(kept, /^burst (2[1-9]|30)$/, 'a refused message is back in the box');
  const delivered = await h.messages(bob.page);
  assert.ok(delivered.length >= 20 && delivered.length < 30, `${delivered.length} delivered`);
  assert.ok(!delivered.some((m) => m.text === kept), 'the text in the box is one that was not delivered');
  await h.screenshot(fast.page, 'error-rate-limited');
  // After a moment, Enter sends it.
  await fast.page.locator('#message-input').press('Enter');
  await h.waitForMessage(bob.page, kept);
  await fast.context.close();
  await bob.context.close();
});
