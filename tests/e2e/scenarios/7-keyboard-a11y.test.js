'use strict';
// Scenario 7: keyboard only (Tab reaches the message box, Enter sends,
// Shift+Enter is a new line, the skip link and the room switcher work), and
// axe-core finds no serious or critical accessibility violation on the
// sign-in page, the chat (light and dark, desktop and phone panel) and an
// error notice. Also: relative times move on as time passes.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('7-keyboard-a11y');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

/** Moves the keyboard's starting point to the top of the document, as on arrival. */
const focusTop = (page) =>
  page.evaluate(() => {
    document.body.tabIndex = -1;
    document.body.focus();
    document.body.removeAttribute('tabindex');
  });

const focusedId = (page) => page.evaluate(() => document.activeElement && document.activeElement.id);

function assertNoSerious(violations, where) {
  assert.deepEqual(violations, [], `axe-core on ${where}:\n${JSON.stringify(violations, null, 2)}`);
}

test('keyboard only: sign in, reach the box with Tab, send with Enter', { timeout: 60000 }, async () => {
  const kim = await h.newPerson(browser);
  const { page } = kim;
  await page.goto(`${node.url}/signin`);
  assertNoSerious(await h.axe(page), 'the sign-in page');
  // The name field has focus on arrival; typing and Enter sign in.
  assert.equal(await focusedId(page), 'name');
  await page.keyboard.type('Kim Keys');
  await page.keyboard.press('Enter');
  await page.waitForURL(`${node.url}/`);
  await h.waitOnline(page);

  // From the top of the page, Tab reaches the message box.
  await focusTop(page);
  const path = [];
  for (let i = 0; i < 25 && (await focusedId(page)) !== 'message-input'; i += 1) {
    await page.keyboard.press('Tab');
    path.push(await page.evaluate(() => {
      const el = document.activeElement;
      return el.id || el.className || el.tagName;
    }));
  }
  assert.equal(await focusedId(page), 'message-input', `Tab order: ${path.join(' → ')}`);
  await page.keyboard.type('typed with the keyboard');
  await page.keyboard.press('Enter');
  await h.waitForMessage(page, 'typed with the keyboard');
  assert.equal(await page.locator('#message-input').inputValue(), '');
  assert.equal(await focusedId(page), 'message-input', 'focus stays in the box after sending');

  // Shift+Enter makes a new line; Enter then sends both lines as one message.
  await page.keyboard.type('line one');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('line two');
  assert.equal(await page.locator('#message-input').inputValue(), 'line one\nline two');
  await page.keyboard.press('Enter');
  await h.waitForMessage(page, 'line one\nline two');

  // The skip link is the first stop and jumps to the message box.
  await focusTop(page);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip-link');
  assert.ok(await page.locator('.skip-link').isVisible(), 'the skip link shows when focused');
  await page.keyboard.press('Enter');
  assert.equal(await focusedId(page), 'message-input');

  // The focused control has a visible outline.
  const outline = await page.locator('#message-input').evaluate((el) => getComputedStyle(el).outlineStyle);
  assert.notEqual(outline, 'none');

  // The room switcher by keyboard: type a name, Enter goes there.
  await page.locator('#room-input').focus();
  await page.keyboard.type('Dev-Ops');
  await page.keyboard.press('Enter');
  await page.waitForURL(`${node.url}/rooms/dev-ops`);
  await h.waitOnline(page);
  const rooms = await page.$$eval('#room-list a.room-link', (links) =>
    links.map((a) => [a.textContent, a.getAttribute('href'), a.getAttribute('aria-current')]),
  );
  assert.deepEqual(rooms, [
    ['#lobby', '/', null],
    ['#dev-ops', '/rooms/dev-ops', 'page'],
  ]);
  await h.screenshot(page, 'room-switcher');
  assert.deepEqual(page.problems.pageErrors, []);
  await kim.context.close();
});

test('axe-core: no serious violations on the chat, light and dark, desktop and phone', { timeout: 90000 }, async () => {
  for (const colorScheme of ['light', 'dark']) {
    const ann = await h.newPerson(browser, { colorScheme });
    const ben = await h.newPerson(browser, { colorScheme });
    await h.signIn(ann.page, node.url, `Ann ${colorScheme}`);
    await h.signIn(ben.page, node.url, `Ben ${colorScheme}`);
    await h.send(ben.page, `Hello in ${colorScheme}`);
    await h.send(ann.page, 'Hi Ben');
    await h.send(ann.page, 'A follow-up, grouped');
    await h.waitForMessage(ann.page, 'A follow-up, grouped');
    await h.waitForMessage(ann.page, `Hello in ${colorScheme}`);
    // An error notice and the character counter on screen too.
    await ann.page.locator('#message-input').fill('x'.repeat(2010));
    await ann.page.locator('#message-input').press('Enter');
    await ann.page.locator('#notice-bar', { hasText: 'too long' }).waitFor();
    await ann.page.locator('#char-count', { hasText: 'over the limit' }).waitFor();
    assertNoSerious(await h.axe(ann.page), `the chat (${colorScheme})`);
    if (colorScheme === 'dark') await h.screenshot(ann.page, 'chat-dark');

    await ann.page.setViewportSize({ width: 375, height: 740 });
    await ann.page.locator('#sidebar-toggle').click();
    await ann.page.locator('#sidebar').waitFor();
    assertNoSerious(await h.axe(ann.page), `the phone panel (${colorScheme})`);
    await ann.context.close();
    await ben.context.close();
  }
});

test('the connection state and relative times a person reads', { timeout: 60000 }, async () => {
  const tim = await h.newPerson(browser);
  // A clock the test can move: "just now" becomes "5 min ago" without waiting.
  await tim.page.clock.install({ time: new Date() });
  await h.signIn(tim.page, node.url, 'Tim');
  await h.send(tim.page, 'what time is it?');
  await h.waitForMessage(tim.page, 'what time is it?');
  const time = tim.page.locator('#messages li.message time.time').last();
  assert.equal(await time.textContent(), 'just now');
  // Five minutes pass (the page refreshes times every 30 s, so it reads 4 or 5 min).
  await tim.page.clock.runFor('05:00');
  await tim.page.waitForFunction(() => {
    const times = document.querySelectorAll('#messages li.message time.time');
    return /^[45] min ago$/.test(times[times.length - 1].textContent);
  });
  await tim.page.clock.runFor('01:00:00');
  await tim.page.waitForFunction(() => {
    const times = document.querySelectorAll('#messages li.message time.time');
    // Over an hour ago: the clock time it was sent at (or the day, past midnight).
    return /^(\d\d:\d\d|\d{1,2} [A-Z][a-z]{2})$/.test(times[times.length - 1].textContent);
  });
  // The status is a labelled, visible state, not only a color.
  assert.equal(await tim.page.locator('#status').getAttribute('data-state'), 'online');
  assert.equal(await tim.page.locator('#status .status-text').textContent(), 'Online');
  await tim.context.close();
});
