'use strict';
// Scenario 3: a reload shows the recent history once; a second tab of the
// same user is listed once; a hidden tab counts unread messages in its title;
// a tab over the server's per-user limit says so and connects once it can.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  // The default grace: a reload within it announces nothing.
  // Two sockets per user at most, to see a third tab refused (1008).
  node = await h.startConfab('3-reload-tabs', {
    env: { CONFAB_LEAVE_GRACE_MS: '5000', CONFAB_MAX_SOCKETS_PER_USER: '2' },
  });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

/** Asserts that every message id on screen is there once and the texts are `texts`, in order. */
async function assertShownOnce(page, texts) {
  const shown = await h.messages(page);
  assert.deepEqual(shown.map((m) => m.text), texts);
  const ids = shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'no message twice');
  const notices = await page.$$eval('#messages li.notice', (items) => items.map((li) => li.dataset.id));
  assert.equal(new Set(notices).size, notices.length, 'no notice twice');
}

test('reload shows history once; a second tab is listed once', { timeout: 60000 }, async () => {
  const alice = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.controlVisibility(alice.page);
  await h.signIn(alice.page, node.url, 'Alice');
  await h.signIn(bob.page, node.url, 'Bob');

  const texts = ['first', 'second', 'third', 'from bob'];
  await h.send(alice.page, 'first');
  await h.send(alice.page, 'second');
  await h.send(alice.page, 'third');
  await h.waitForMessage(bob.page, 'third');
  await h.send(bob.page, 'from bob');
  await h.waitForMessage(alice.page, 'from bob');
  await assertShownOnce(alice.page, texts);
  const before = await h.messages(alice.page);

  // Reload: the same history, once, with the same ids and authors.
  await alice.page.reload();
  await h.waitOnline(alice.page);
  await h.waitForMessage(alice.page, 'from bob');
  await assertShownOnce(alice.page, texts);
  assert.deepEqual(
    (await h.messages(alice.page)).map(({ id, author, text }) => ({ id, author, text })),
    before.map(({ id, author, text }) => ({ id, author, text })),
  );
  // The reload did not announce Alice again to Bob.
  assert.equal(await bob.page.locator('#messages li.notice', { hasText: 'Alice joined.' }).count(), 1);
  assert.equal(await bob.page.locator('#messages li.notice', { hasText: 'Alice left.' }).count(), 0);

  // A second tab of the same person: she is listed once everywhere.
  const tab2 = await alice.context.newPage();
  h.watch(tab2);
  await tab2.goto(`${node.url}/`);
  await h.waitOnline(tab2);
  await assertShownOnce(tab2, texts);
  for (const page of [alice.page, tab2, bob.page]) {
    await h.waitForUsers(page, ['Alice', 'Bob']);
    assert.equal(await page.locator('#online-count').textContent(), '2 online');
  }
  assert.equal(await tab2.locator('#users li.user.own').count(), 1);

  // While the first tab is in the background, messages from others count in its title.
  await h.setHidden(alice.page, true);
  await h.send(bob.page, 'are you there?');
  await h.send(bob.page, 'hello?');
  await h.waitForMessage(alice.page, 'hello?');
  await h.send(tab2, 'my own message does not count');
  await h.waitForMessage(alice.page, 'my own message does not count');
  assert.equal(await alice.page.title(), '(2) #lobby · confab');
  assert.equal(await tab2.title(), '#lobby · confab', 'the visible tab keeps its plain title');
  await h.setHidden(alice.page, false);
  assert.equal(await alice.page.title(), '#lobby · confab');

  // Closing the second tab leaves her online (the first is still open): no "left".
  await tab2.close();
  await h.send(bob.page, 'still here?');
  await h.waitForMessage(alice.page, 'still here?');
  await h.waitForUsers(bob.page, ['Alice', 'Bob']);
  assert.equal(await bob.page.locator('#messages li.notice', { hasText: 'Alice left.' }).count(), 0);

  for (const { page } of [alice, bob]) {
    assert.deepEqual(page.problems.pageErrors, []);
    assert.deepEqual(page.problems.consoleErrors, []);
  }

  // One tab too many (the server allows two here): the page says why, and
  // connects by itself once another tab is closed.
  const second = await alice.context.newPage();
  await second.goto(`${node.url}/`);
  await h.waitOnline(second);
  const third = await alice.context.newPage();
  h.watch(third);
  await third.goto(`${node.url}/`);
  await third.locator('#notice-bar', { hasText: 'You have too many chat tabs open.' }).waitFor();
  await third.locator('#status[data-state="reconnecting"]').waitFor();
  await h.screenshot(third, 'error-too-many-tabs');
  await second.close();
  await h.waitOnline(third, 30000);
  await third.locator('#notice-bar:empty').waitFor({ state: 'attached' });
  await h.waitForUsers(third, ['Alice', 'Bob']);
  await assertShownOnce(third, [...texts, 'are you there?', 'hello?', 'my own message does not count', 'still here?']);
  await alice.context.close();
  await bob.context.close();
});
