'use strict';
// Scenario 5: two nodes sharing a Redis (and, when nginx/confab.conf exists,
// nginx in front of them): people on different nodes chat and see the same
// conversation; a Redis outage is shown to the sender in plain words with the
// text kept; a node drained behind nginx is invisible but for a moment of
// "reconnecting".

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let redis;
let nodes = [];
let browser;

function nodeEnv(id, extra = {}) {
  return {
    CONFAB_REDIS_URL: redis.url,
    CONFAB_NODE_ID: id,
    CONFAB_LEAVE_GRACE_MS: '5000',
    ...extra,
  };
}

before(async () => {
  redis = await h.startRedis('5-redis');
  nodes = [
    await h.startConfab('5-node-1', { env: nodeEnv('e2e-1') }),
    await h.startConfab('5-node-2', { env: nodeEnv('e2e-2') }),
  ];
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await Promise.all(nodes.map((node) => node.stop().catch(() => node.stop('SIGKILL'))));
  await redis?.stop();
});

async function conversation(page) {
  const shown = await h.messages(page);
  const ids = shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'no message twice');
  for (let i = 1; i < ids.length; i += 1) assert.ok(BigInt(ids[i]) > BigInt(ids[i - 1]), 'ids grow');
  return shown.map((m) => `${m.author}: ${m.text}`);
}

test('people on different nodes chat, in one order everywhere', { timeout: 90000 }, async () => {
  const [one, two] = nodes;
  const alice = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(alice.page, one.url, 'Alice');
  // Bob signs in on the other node; the shared secret makes each cookie good on both.
  await h.signIn(bob.page, two.url, 'Bob');
  // Alice's second tab, on node 2 with the cookie node 1 made.
  const aliceTab2 = await alice.context.newPage();
  h.watch(aliceTab2);
  await aliceTab2.goto(`${two.url}/`);
  await h.waitOnline(aliceTab2);

  const pages = [alice.page, bob.page, aliceTab2];
  for (const page of pages) {
    await h.waitForUsers(page, ['Alice', 'Bob']);
    assert.equal(await page.locator('#online-count').textContent(), '2 online');
  }

  // Both type at once, without waiting for each other.
  await Promise.all([
    (async () => {
      for (const text of ['a1 from node 1', 'a2 from node 1', 'a3 from node 1']) await h.send(alice.page, text);
    })(),
    (async () => {
      for (const text of ['b1 from node 2', 'b2 from node 2', 'b3 from node 2']) await h.send(bob.page, text);
    })(),
  ]);
  await h.send(aliceTab2, 'a4 from node 2');
  for (const page of pages) {
    for (const text of ['a3 from node 1', 'b3 from node 2', 'a4 from node 2']) await h.waitForMessage(page, text);
  }
  const seen = await Promise.all(pages.map(conversation));
  assert.equal(seen[0].length, 7);
  assert.deepEqual(seen[1], seen[0], 'node 2 shows the order node 1 shows');
  assert.deepEqual(seen[2], seen[0]);
  // One sender's messages keep the order they were sent in.
  assert.deepEqual(seen[0].filter((line) => line.startsWith('Alice: a')).slice(0, 3), [
    'Alice: a1 from node 1',
    'Alice: a2 from node 1',
    'Alice: a3 from node 1',
  ]);
  await h.screenshot(bob.page, 'cluster-node-2');

  // Redis goes away: a message cannot be published; the sender is told in
  // plain words and keeps the text.
  await redis.stop('SIGKILL');
  await h.send(alice.page, 'while redis is down');
  await alice.page
    .locator('#notice-bar', { hasText: 'the chat service is temporarily unavailable' })
    .waitFor({ timeout: 20000 });
  assert.equal(await alice.page.locator('#message-input').inputValue(), 'while redis is down');
  await h.screenshot(alice.page, 'error-unavailable');

  // Redis back (empty, on the same port): chat resumes without a reload.
  redis = await h.startRedis('5-redis-again', { port: redis.port });
  const deadline = Date.now() + 40000;
  for (;;) {
    // Enter sends what is in the box; a refusal puts the text back.
    await alice.page.locator('#message-input').press('Enter');
    const outcome = await Promise.race([
      h.waitForMessage(alice.page, 'while redis is down', 3000).then(() => 'sent'),
      alice.page
        .waitForFunction(() => document.getElementById('message-input').value !== '', null, { timeout: 3000 })
        .then(() => 'refused'),
    ]).catch(() => 'no answer yet');
    if (outcome === 'sent') break;
    assert.ok(Date.now() < deadline, `chat resumes within 40 s of Redis coming back (last: ${outcome})`);
  }
  for (const page of pages) await h.waitForMessage(page, 'while redis is down', 20000);
  const after = await Promise.all(pages.map(conversation));
  assert.deepEqual(after[1], after[0]);
  assert.deepEqual(after[0].slice(0, 7), seen[0]);
  assert.equal(after[0].filter((line) => line === 'Alice: while redis is down').length, 1);

  for (const page of pages) assert.deepEqual(page.problems.pageErrors, []);
  await alice.context.close();
  await bob.context.close();
});
