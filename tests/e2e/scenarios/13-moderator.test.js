'use strict';
// A moderator signed in by the host application's token (GET /signin/token)
// deletes someone else's message from the page: the moderator gets Delete (and
// no Edit) on others' messages, everyone sees "message deleted"; a user
// signed in by name gets no controls on others' messages. A user banned for a
// while comes back with "Retry now" once the ban is over.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

const JWT_KEY = 'host-application-shared-key-of-32-bytes-or-more';
const API_TOKEN = 'host-application-api-token-of-32-bytes-or-more';

let node;
let browser;

before(async () => {
  const tokens = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'confab-e2e-tokens-')), 'tokens');
  fs.writeFileSync(tokens, `${API_TOKEN}\n`);
  node = await h.startConfab('13-moderator', {
    env: { CONFAB_JWT_KEY: JWT_KEY, CONFAB_API_TOKENS_FILE: tokens },
  });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

/** An HS256 JWT, as a host application would sign it. */
function token(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const signature = crypto.createHmac('sha256', JWT_KEY).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

test('a moderator deletes a message of someone else from the page', { timeout: 90000 }, async () => {
  const mo = await h.newPerson(browser);
  const ann = await h.newPerson(browser);
  const now = Math.floor(Date.now() / 1000);
  const signed = token({ sub: 'host-mod-1', name: 'Mo Derator', confab_role: 'moderator', exp: now + 120 });
  await mo.page.goto(`${node.url}/signin/token?token=${signed}&next=/rooms/town`);
  await mo.page.waitForURL(`${node.url}/rooms/town`);
  await h.waitOnline(mo.page);

  await ann.page.goto(`${node.url}/signin`);
  await ann.page.locator('#name').fill('ann');
  await ann.page.getByRole('button', { name: 'Sign in' }).click();
  await ann.page.waitForURL(`${node.url}/`);
  await ann.page.goto(`${node.url}/rooms/town`);
  await h.waitOnline(ann.page);

  await h.send(ann.page, 'buy cheap watches');
  await h.waitForMessage(mo.page, 'buy cheap watches');
  await h.send(mo.page, 'please keep it on topic');
  await h.waitForMessage(ann.page, 'please keep it on topic');

  const spam = mo.page.locator('#messages li.message', { hasText: 'buy cheap watches' });
  assert.equal(await spam.getByRole('button', { name: 'Edit message' }).count(), 0, 'no Edit on others\' messages');
  const annView = ann.page.locator('#messages li.message', { hasText: 'please keep it on topic' });
  assert.equal(await annView.getByRole('button', { name: 'Delete message' }).count(), 0, 'ann cannot delete the moderator\'s');

  await spam.hover();
  await spam.getByRole('button', { name: 'Delete message' }).click();
  await spam.getByRole('button', { name: 'Yes, delete message' }).click();
  await ann.page.locator('#messages li.message.deleted').waitFor();
  await mo.page.locator('#messages li.message.deleted').waitFor();
  const seen = await h.messages(ann.page);
  const deleted = seen.filter((m) => m.deleted);
  assert.equal(deleted.length, 1);
  assert.ok(!seen.some((m) => m.text === 'buy cheap watches'), 'its text is gone');
  assert.deepEqual(mo.page.problems.dialogs, []);

  // Remove ann from the room: she is told, and stays out (banned for 10 minutes) even after a
  // reload; the moderator's list drops her.
  const annInList = mo.page.locator('#users li.user', { hasText: 'ann' });
  const remove = annInList.getByRole('button', { name: 'Remove ann from the room' });
  await remove.focus();
  await mo.page.keyboard.press('Enter');
  await annInList.getByRole('button', { name: 'Yes, remove ann for 10 minutes' }).click();
  await ann.page.locator('#notice-bar', { hasText: 'A moderator removed you from this room.' }).waitFor();
  await mo.page.locator('#users li.user', { hasText: 'ann' }).waitFor({ state: 'detached' });
  await ann.page.reload();
  await ann.page.locator('#notice-bar', { hasText: 'You are banned from this room for now.' }).waitFor();
  assert.equal(await ann.page.locator('#status').getAttribute('data-state'), 'offline');
  assert.ok(await ann.page.locator('#message-input').isDisabled(), 'nothing can be typed for nowhere');
  await h.screenshot(ann.page, 'kicked');
});

test('a user whose ban is over comes back with Retry now', { timeout: 90000 }, async () => {
  const bea = await h.newPerson(browser);
  await h.signIn(bea.page, node.url, 'bea');
  await bea.page.goto(`${node.url}/rooms/dock`);
  await h.waitOnline(bea.page);

  // The host application removes her for three seconds, through the API.
  const api = (route, init = {}) =>
    fetch(`${node.url}/api/rooms/dock/${route}`, {
      ...init,
      headers: { Authorization: `Bearer ${API_TOKEN}`, 'Content-Type': 'application/json' },
    });
  const { members } = await (await api('members')).json();
  const beaId = members.find((member) => member.name === 'bea').id;
  const kicked = await api('kicks', { method: 'POST', body: JSON.stringify({ user_id: beaId, ban_seconds: 3 }) });
  assert.equal(kicked.status, 204);
  await bea.page.locator('#notice-bar', { hasText: 'A moderator removed you from this room.' }).waitFor();
  assert.equal(await bea.page.locator('#status').getAttribute('data-state'), 'offline');
  assert.ok(await bea.page.locator('#message-input').isDisabled());
  const retry = bea.page.getByRole('button', { name: 'Retry now' });
  assert.ok(await retry.isVisible(), 'a removed user may try again');

  // While the ban lasts, trying again says so; once it is over, she is back in.
  const deadline = Date.now() + 20000;
  let refusals = 0;
  for (;;) {
    await retry.click();
    // A banned socket opens and is closed with 4003 at once: the notice comes within moments.
    const refused = await bea.page
      .locator('#notice-bar', { hasText: 'You are banned from this room for now.' })
      .waitFor({ timeout: 3000 })
      .then(() => true, () => false);
    if (!refused) break;
    refusals += 1;
    assert.ok(Date.now() < deadline, 'the ban of three seconds ended');
    await retry.waitFor();
    await bea.page.waitForTimeout(500); // the pace of a person trying again
  }
  assert.ok(refusals >= 1, 'trying again during the ban was refused');
  await h.waitOnline(bea.page);
  assert.ok(!(await bea.page.locator('#message-input').isDisabled()), 'she can type again');
  assert.equal(await bea.page.locator('#notice-bar').textContent(), '');
  await h.send(bea.page, 'back again');
  await h.waitForMessage(bea.page, 'back again');
  assert.deepEqual(bea.page.problems.dialogs, []);
});
