'use strict';
// Scenario 4: the server is restarted (SIGTERM, then started again on the
// same port) while two pages are open. The pages show that they are
// reconnecting, come back by themselves, and show every message once: none
// missing, none twice, and no join/left noise from the restart. A message
// typed while the server is away stays in the box and is sent once back.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('4-restart-a', { env: { CONFAB_LEAVE_GRACE_MS: '5000' } });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

async function conversation(page) {
  const shown = await h.messages(page);
  const ids = shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'no message twice');
  for (let i = 1; i < ids.length; i += 1) assert.ok(BigInt(ids[i]) > BigInt(ids[i - 1]), 'ids grow');
  return shown.map((m) => `${m.author}: ${m.text}`);
}

function notices(page) {
  return page.$$eval('#messages li.notice', (items) => items.map((li) => li.textContent));
}

test('a server restart: reconnecting is shown, the page comes back, nothing lost or doubled', { timeout: 90000 }, async () => {
  const alice = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(alice.page, node.url, 'Alice');
  await h.signIn(bob.page, node.url, 'Bob');
  await h.send(alice.page, 'before the restart');
  await h.send(bob.page, 'me too');
  await h.waitForMessage(alice.page, 'me too');
  await h.waitForMessage(bob.page, 'me too');
  const noticesBefore = await notices(alice.page);
  const bobNoticesBefore = await notices(bob.page);

  // SIGTERM: the node drains (close 1012) and exits.
  const { port } = node;
  const exit = await node.stop('SIGTERM');
  assert.equal(exit.code, 0, 'a drained node exits 0');

  for (const { page } of [alice, bob]) {
    await page.locator('#status[data-state="reconnecting"]').waitFor();
    await page.locator('#status', { hasText: /Reconnecting/ }).waitFor();
    assert.ok(await page.getByRole('button', { name: 'Retry now' }).isVisible());
  }
  // The message box stays usable: a message typed now is kept, with a plain word why.
  await h.send(bob.page, 'typed while the server was away');
  await bob.page.locator('#notice-bar', { hasText: 'Not connected — your message was not sent.' }).waitFor();
  assert.equal(await bob.page.locator('#message-input').inputValue(), 'typed while the server was away');
  await h.screenshot(alice.page, 'reconnecting');
  await h.screenshot(bob.page, 'error-not-connected');

  // Start again on the same port; the pages find it on their own.
  node = await h.startConfab('4-restart-b', { bind: `127.0.0.1:${port}`, env: { CONFAB_LEAVE_GRACE_MS: '5000' } });
  for (const { page } of [alice, bob]) await h.waitOnline(page, 40000);
  await h.waitForUsers(alice.page, ['Alice', 'Bob']);

  // Bob sends what he had typed (it is still in the box), Alice writes on.
  await bob.page.locator('#message-input').press('Enter');
  await h.send(alice.page, 'after the restart');
  const expected = [
    'Alice: before the restart',
    'Bob: me too',
    'Bob: typed while the server was away',
    'Alice: after the restart',
  ];
  for (const { page } of [alice, bob]) {
    await h.waitForMessage(page, 'after the restart');
    await h.waitForMessage(page, 'typed while the server was away');
    assert.deepEqual(await conversation(page), expected);
  }
  // Coming back is not news: nobody "left" or "joined" because of the restart.
  assert.deepEqual(await notices(alice.page), noticesBefore);
  assert.deepEqual(await notices(bob.page), bobNoticesBefore);
  assert.equal(await alice.page.locator('#notice-bar').textContent(), '');
  assert.equal(await alice.page.locator('#online-count').textContent(), '2 online');

  for (const { page } of [alice, bob]) assert.deepEqual(page.problems.pageErrors, []);
  await alice.context.close();
  await bob.context.close();
});
