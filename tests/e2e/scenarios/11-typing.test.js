'use strict';
// Typing: while ann types, the others read "ann is typing…" under the log;
// it goes the moment her message arrives, or 4 s after she stops. Several
// typists collapse into one line. Nobody sees themselves typing.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('11-typing');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const typingLine = (page) => page.locator('#typing').textContent();

function waitTyping(page, expected, ms = 10000) {
  return page.waitForFunction(
    (wanted) => {
      const text = document.getElementById('typing').textContent;
      return wanted.startsWith('/') ? new RegExp(wanted.slice(1, -1)).test(text) : text === wanted;
    },
    expected instanceof RegExp ? String(expected) : expected,
    { timeout: ms },
  );
}

test('"ann is typing…" shows while she types and goes when her message arrives or she stops', { timeout: 90000 }, async () => {
  const ann = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(ann.page, node.url, 'ann');
  await h.signIn(bob.page, node.url, 'bob');
  await h.waitForUsers(bob.page, ['ann', 'bob']);
  assert.equal(await typingLine(bob.page), '');

  // Real key presses in the box.
  await ann.page.locator('#message-input').focus();
  await ann.page.keyboard.type('hello bob', { delay: 20 });
  await waitTyping(bob.page, 'ann is typing…');
  assert.ok(await bob.page.locator('#typing').isVisible());
  assert.equal(await typingLine(ann.page), '', 'ann does not see herself typing');

  // Her message arrives: the line goes with it, long before 4 s.
  const sent = Date.now();
  await ann.page.keyboard.press('Enter');
  await h.waitForMessage(bob.page, 'hello bob');
  await waitTyping(bob.page, '', 1500);
  assert.ok(Date.now() - sent < 3000, 'gone with the message, not by the timeout');

  // She starts again (within 2 s of the last notice: the page tells the room
  // once that window ends) and then stops: the line goes by itself after 4 s.
  await ann.page.keyboard.type('and one more thing', { delay: 20 });
  await waitTyping(bob.page, 'ann is typing…', 5000);
  const shownAt = Date.now();
  await bob.page.screenshot({ path: `${h.ARTIFACTS}/typing-one.png` });
  await waitTyping(bob.page, '', 8000);
  const gone = Date.now() - shownAt;
  assert.ok(gone >= 3000 && gone <= 6500, `gone ${gone} ms after it showed (4 s after the last notice)`);
  assert.deepEqual(bob.page.problems.pageErrors, []);
  await ann.context.close();
  await bob.context.close();
});

test('several typists collapse into one line', { timeout: 90000 }, async () => {
  const people = {};
  for (const name of ['ann', 'bob', 'cy', 'di']) {
    people[name] = await h.newPerson(browser);
    await h.signIn(people[name].page, node.url, name);
  }
  await h.waitForUsers(people.di.page, ['ann', 'bob', 'cy', 'di']);
  const type = (name, text) => people[name].page.locator('#message-input').pressSequentially(text);

  await type('ann', 'one');
  await waitTyping(people.di.page, 'ann is typing…');
  await type('bob', 'two');
  await waitTyping(people.di.page, /^(ann and bob|bob and ann) are typing…$/);
  // ann, who is one of them, sees only bob.
  await waitTyping(people.ann.page, 'bob is typing…');
  await type('cy', 'three');
  await waitTyping(people.di.page, 'Several people are typing…');
  await h.screenshot(people.di.page, 'typing-several');

  // bob sends: two are left.
  await people.bob.page.locator('#message-input').press('Enter');
  await h.waitForMessage(people.di.page, 'two');
  await waitTyping(people.di.page, /^(ann and cy|cy and ann) are typing…$/, 3000);
  for (const person of Object.values(people)) await person.context.close();
});
