'use strict';
// Scrollback: a room that remembers far more than the history a socket gets
// on connect (CONFAB_HISTORY=5 here). Scrolling to the top loads the previous
// page above, the message under the reader stays where it was, the pages meet
// the live history with nothing twice and nothing out of order, and the top
// says where the room begins. Edits and deletes made before the page loaded
// show on the old messages they changed.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

const TOTAL = 120; // 5 replayed + pages of 50: three trips to the top.
let node;
let browser;

before(async () => {
  node = await h.startConfab('10-scrollback', {
    env: { CONFAB_HISTORY: '5', CONFAB_RETAIN_MESSAGES: '1000' },
  });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const texts = Array.from({ length: TOTAL }, (_, i) => `old ${i + 1}`);

/** Messages shown, checked for order and duplicates on the way. */
async function shown(page) {
  const list = await h.messages(page);
  const ids = list.map((m) => Number(m.id));
  for (let i = 1; i < ids.length; i += 1) {
    assert.ok(ids[i] > ids[i - 1], `ids strictly increase: ${ids[i - 1]} then ${ids[i]}`);
  }
  // Every item in the log (notices too), in id order and once each.
  const all = await page.$$eval('#message-list > li', (items) => items.map((li) => Number(li.dataset.id)));
  assert.equal(new Set(all).size, all.length, 'no item twice');
  assert.deepEqual([...all].sort((a, b) => a - b), all, 'log sorted by id');
  return list;
}

/** Whether the log has settled: no page being fetched. */
function settled(page) {
  return page.waitForFunction(() => document.getElementById('history-top').dataset.state !== 'loading');
}

/** Scrolls the log to its very top and returns where its first item then is on screen. */
function scrollToTop(page) {
  return page.evaluate(() => {
    const log = document.getElementById('messages');
    log.scrollTop = 0;
    const first = document.querySelector('#message-list > li');
    return { id: first.dataset.id, top: first.getBoundingClientRect().top };
  });
}

test('scrolling to the top loads older pages in place, once each, down to the beginning', { timeout: 120000 }, async () => {
  const ann = await h.newPerson(browser);
  await h.signIn(ann.page, node.url, 'ann');
  const { ids } = await h.postMessages(ann.page, texts);
  // Changed after the fact, long before bob comes: scrollback shows the latest state.
  const { results } = await h.postMessages(ann.page, [], [
    { type: 'edit', id: ids[2], data: 'old 3, fixed <img src=x onerror=alert(1)>' },
    { type: 'delete', id: ids[3] },
  ]);
  assert.deepEqual(results.map((f) => f.type), ['edit', 'delete'], JSON.stringify(results));

  const bob = await h.newPerson(browser);
  const requests = [];
  bob.page.on('request', (request) => {
    if (request.url().includes('/api/rooms/')) requests.push(new URL(request.url()).search);
  });
  await h.signIn(bob.page, node.url, 'bob');
  // Five replayed do not fill the window: the page fetched one page by itself.
  await bob.page.waitForFunction(() => document.querySelectorAll('#messages li.message').length > 5);
  await settled(bob.page);
  let list = await shown(bob.page);
  // The replayed five are the newest frames (the edit and the delete among
  // them); the page of 50 before them joins them without a gap.
  const firstCount = list.length;
  assert.ok(firstCount >= 50 && firstCount <= 55, `replayed + 50 fetched, got ${firstCount}`);
  assert.deepEqual(list.map((m) => m.text), texts.slice(TOTAL - firstCount));
  assert.equal(requests.length, 1, `one request so far: ${requests}`);
  assert.match(requests[0], /before=\d+/, 'asks for what is before the oldest item shown');
  assert.ok(
    await bob.page.evaluate(() => {
      const m = document.getElementById('messages');
      return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
    }),
    'the reader is still at the newest message',
  );
  assert.equal(await bob.page.locator('#history-status').textContent(), '', 'no beginning yet');

  // To the top: the next page goes above, and the message that was at the top stays put.
  const top = await scrollToTop(bob.page);
  await bob.page.waitForFunction(
    (id) => document.querySelector('#message-list > li').dataset.id !== id,
    top.id,
  );
  await settled(bob.page);
  const moved = await bob.page.evaluate(
    (id) => document.querySelector(`#message-list > li[data-id="${id}"]`).getBoundingClientRect().top,
    top.id,
  );
  assert.ok(Math.abs(moved - top.top) <= 1, `the message at the top stayed at ${top.top}px (now ${moved}px)`);
  list = await shown(bob.page);
  assert.deepEqual(list.map((m) => m.text), texts.slice(TOTAL - firstCount - 50));

  // A live message while the reader is up there: at the end, offered, not scrolled to.
  await h.send(ann.page, 'live while bob reads old ones');
  await h.waitForMessage(bob.page, 'live while bob reads old ones');
  assert.ok(await bob.page.locator('#new-messages').isVisible(), '"New messages" is offered');

  // The last trip by keyboard: Home in the log. The room's first messages
  // come, and Home again shows where it begins.
  await bob.page.locator('#messages').focus();
  await bob.page.keyboard.press('Home');
  await bob.page.locator('#history-top[data-state="start"]').waitFor({ state: 'attached' });
  await bob.page.keyboard.press('Home');
  await bob.page.waitForFunction(() => document.getElementById('messages').scrollTop === 0);
  const marker = bob.page.locator('#history-status');
  assert.equal(await marker.textContent(), 'This is the beginning of #lobby');
  assert.ok(await marker.isVisible(), 'the beginning is shown');
  list = await shown(bob.page);
  const expected = [...texts, 'live while bob reads old ones'];
  expected[2] = 'old 3, fixed <img src=x onerror=alert(1)>';
  expected[3] = 'message deleted';
  assert.deepEqual(list.map((m) => m.text), expected);
  assert.equal(list[2].edited, true, '"(edited)" on the edited one');
  assert.equal(list[3].deleted, true, 'the deleted one is marked');
  assert.equal(list.filter((m) => m.edited).length, 1);
  assert.equal(await bob.page.locator('#messages img:not(.avatar-img)').count(), 0, 'the edited text is text, not markup');
  assert.equal(requests.length, 3, `three pages, no more once at the beginning: ${requests}`);
  // The beginning sits above the first message.
  const order = await bob.page.evaluate(() => {
    const marker = document.getElementById('history-top').getBoundingClientRect();
    const first = document.querySelector('#messages li.message').getBoundingClientRect();
    return marker.bottom <= first.top;
  });
  assert.ok(order, 'the beginning is above the first message');
  await h.screenshot(bob.page, 'scrollback-beginning');

  // A reload starts from the newest again, with the latest state.
  await bob.page.reload();
  await h.waitOnline(bob.page);
  await bob.page.waitForFunction(() => document.querySelectorAll('#messages li.message').length > 5);
  await settled(bob.page);
  list = await shown(bob.page);
  assert.equal(list.at(-1).text, 'live while bob reads old ones');
  assert.deepEqual(list.map((m) => m.text), expected.slice(expected.length - list.length));

  assert.deepEqual(bob.page.problems.pageErrors, []);
  assert.deepEqual(bob.page.problems.consoleErrors, []);
  assert.deepEqual(bob.page.problems.dialogs, []);
  assert.deepEqual(await h.cspViolations(bob.page), []);
  await ann.context.close();
  await bob.context.close();
});

test('a short room: the page fetches once and shows where it begins', { timeout: 60000 }, async () => {
  const cat = await h.newPerson(browser);
  await cat.page.goto(`${node.url}/signin`);
  await cat.page.locator('#name').fill('cat');
  await cat.page.getByRole('button', { name: 'Sign in' }).click();
  await cat.page.waitForURL(`${node.url}/`);
  await cat.page.goto(`${node.url}/rooms/quiet`);
  await h.waitOnline(cat.page);
  // Nothing said yet: the empty state, not the beginning line.
  await cat.page.locator('#empty-state').waitFor();
  await settled(cat.page);
  assert.equal(await cat.page.locator('#history-top').isVisible(), false);
  await h.send(cat.page, 'first words');
  await h.waitForMessage(cat.page, 'first words');
  await cat.page.locator('#history-status', { hasText: 'This is the beginning of #quiet' }).waitFor();
  assert.equal(await cat.page.locator('#empty-state').isVisible(), false);
  await cat.context.close();
});
