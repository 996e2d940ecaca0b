'use strict';
// Edit and delete, keyboard only: ann fixes a typo in her message and takes
// another one back; bob sees "(edited)" with the new text and "message
// deleted", and has no such controls on her messages. A refusal from the
// server (forbidden) is told in plain words. A reload shows the latest state.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('12-edit-delete');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

/** The focused element: its aria-label (or id, or tag) and the text of the message it is in. */
function focused(page) {
  return page.evaluate(() => {
    const el = document.activeElement;
    const li = el.closest('li.message');
    const p = li && li.querySelector('.text');
    return {
      label: el.getAttribute('aria-label') || el.id || el.tagName,
      message: p ? (p.querySelector('.edited-mark') ? p.firstChild.data : p.textContent) : null,
      value: 'value' in el ? el.value : null,
    };
  });
}

function byText(list, text) {
  const found = list.find((m) => m.text === text);
  assert.ok(found, `"${text}" among ${JSON.stringify(list.map((m) => m.text))}`);
  return found;
}

test('ann edits and deletes her own messages by keyboard; bob sees the changes, a reload too', { timeout: 90000 }, async () => {
  const ann = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  // Lets the test rewrite ann's next edit to name bob's message, as a
  // tampering client would: the server must refuse it.
  let tamper = null;
  await ann.context.routeWebSocket(/\/ws\/chat/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      if (tamper && typeof message === 'string') {
        const command = JSON.parse(message);
        if (command.type === 'edit') {
          command.id = tamper;
          tamper = null;
          server.send(JSON.stringify(command));
          return;
        }
      }
      server.send(message);
    });
  });
  await h.signIn(ann.page, node.url, 'ann');
  await h.signIn(bob.page, node.url, 'bob');
  await h.waitForUsers(bob.page, ['ann', 'bob']);
  const annId = await ann.page.locator('#app').getAttribute('data-user-id');

  await h.send(bob.page, 'bob was here');
  await h.send(ann.page, 'oops, wrong room');
  await h.send(ann.page, 'helo world');
  await h.waitForMessage(bob.page, 'helo world');

  // bob has controls on his own message only.
  assert.equal(await bob.page.locator(`#messages li.message[data-user-id="${annId}"] button`).count(), 0);
  assert.equal(await bob.page.locator('#messages li.message.own .edit-button').count(), 1);
  assert.equal(await ann.page.locator('#messages li.message:not(.own) button').count(), 0);

  // From the message box, Shift+Tab walks back into ann's last message.
  await ann.page.locator('#message-input').focus();
  await ann.page.keyboard.press('Shift+Tab');
  assert.deepEqual(await focused(ann.page), { label: 'Delete message', message: 'helo world', value: '' });
  assert.ok(await ann.page.locator('#messages li.message.own .delete-button').last().isVisible(), 'a focused control shows');
  await ann.page.keyboard.press('Shift+Tab');
  assert.deepEqual(await focused(ann.page), { label: 'Edit message', message: 'helo world', value: '' });

  // Enter: the text becomes a box; fix the typo; Enter saves.
  await ann.page.keyboard.press('Enter');
  assert.deepEqual(await focused(ann.page), { label: 'Edit message', message: 'helo world', value: 'helo world' });
  await h.screenshot(ann.page, 'edit-box');
  assert.deepEqual(await h.axe(ann.page), [], 'axe-core: the edit box');
  await ann.page.keyboard.press('Control+A');
  await ann.page.keyboard.type('hello world');
  await ann.page.keyboard.press('Enter');
  await h.waitForMessage(bob.page, 'hello world');
  await h.waitForMessage(ann.page, 'hello world');
  let seen = byText(await h.messages(bob.page), 'hello world');
  assert.equal(seen.edited, true, 'bob sees "(edited)"');
  assert.equal(await bob.page.locator('#messages .edited-mark').textContent(), '(edited)');
  assert.equal(byText(await h.messages(ann.page), 'hello world').edited, true);
  assert.deepEqual(await focused(ann.page), { label: 'Edit message', message: 'hello world', value: '' });

  // Enter again, then Escape: nothing changes, focus back on Edit.
  await ann.page.keyboard.press('Enter');
  await ann.page.keyboard.type(' and more');
  await ann.page.keyboard.press('Escape');
  assert.deepEqual(await focused(ann.page), { label: 'Edit message', message: 'hello world', value: '' });
  assert.equal(await ann.page.locator('.edit-input').count(), 0);

  // ↑ in the empty message box edits her last message too.
  await ann.page.locator('#message-input').focus();
  await ann.page.keyboard.press('ArrowUp');
  assert.deepEqual(await focused(ann.page), { label: 'Edit message', message: 'hello world', value: 'hello world' });
  await ann.page.keyboard.press('Escape');

  // A tampered edit naming bob's message: the server refuses, ann is told, nothing changes.
  tamper = Number(byText(await h.messages(ann.page), 'bob was here').id);
  await ann.page.keyboard.press('Enter');
  await ann.page.keyboard.type('!');
  await ann.page.keyboard.press('Enter');
  await ann.page.locator('#notice-bar', { hasText: 'You can only edit or delete your own messages.' }).waitFor();
  await h.screenshot(ann.page, 'edit-forbidden');
  assert.equal(await ann.page.locator('#messages li.message.saving').count(), 0);
  assert.equal(await ann.page.locator('#message-input').inputValue(), '', 'nothing put back in the message box');
  assert.ok((await h.messages(bob.page)).some((m) => m.text === 'bob was here' && !m.edited));

  // Delete the earlier one: Shift+Tab from Edit reaches its Delete.
  await ann.page.keyboard.press('Shift+Tab');
  assert.deepEqual(await focused(ann.page), { label: 'Delete message', message: 'oops, wrong room', value: '' });
  await ann.page.keyboard.press('Enter');
  // It asks first; Escape keeps the message.
  assert.deepEqual(await focused(ann.page), { label: 'Cancel delete', message: 'oops, wrong room', value: '' });
  assert.ok(await ann.page.getByRole('group', { name: 'Delete this message?' }).isVisible());
  await h.screenshot(ann.page, 'delete-confirm');
  assert.deepEqual(await h.axe(ann.page), [], 'axe-core: the delete confirmation');
  await ann.page.keyboard.press('Escape');
  assert.deepEqual(await focused(ann.page), { label: 'Delete message', message: 'oops, wrong room', value: '' });
  await ann.page.keyboard.press('Enter');
  await ann.page.keyboard.press('Shift+Tab');
  assert.deepEqual(await focused(ann.page), { label: 'Yes, delete message', message: 'oops, wrong room', value: '' });
  await ann.page.keyboard.press('Enter');
  await bob.page.locator('#messages li.message.deleted .text', { hasText: 'message deleted' }).waitFor();
  await ann.page.locator('#messages li.message.deleted').waitFor();
  assert.equal(await ann.page.locator('#messages li.message.deleted button').count(), 0, 'no controls on a deleted message');
  assert.equal(await ann.page.evaluate(() => document.activeElement.id), 'messages', 'focus stays in the log');
  const color = await bob.page.locator('#messages li.message.deleted .text').evaluate((p) => getComputedStyle(p).fontStyle);
  assert.equal(color, 'italic', 'greyed and set apart');

  const expected = [
    { author: 'bob', text: 'bob was here', edited: false, deleted: false },
    { author: 'ann', text: 'message deleted', edited: false, deleted: true },
    { author: 'ann', text: 'hello world', edited: true, deleted: false },
  ];
  const view = (list) => list.map(({ author, text, edited, deleted }) => ({ author, text, edited, deleted }));
  assert.deepEqual(view(await h.messages(bob.page)), expected);
  assert.deepEqual(view(await h.messages(ann.page)), expected);
  // Edited and deleted messages, seen by their author and by another, dark too.
  assert.deepEqual(await h.axe(bob.page), [], 'axe-core: edited and deleted, as bob sees them');
  await ann.page.emulateMedia({ colorScheme: 'dark' });
  assert.deepEqual(await h.axe(ann.page), [], 'axe-core: edited and deleted, as ann sees them, dark');
  await ann.page.emulateMedia({ colorScheme: 'light' });

  // A reload (history replay) shows the latest state, controls where they belong.
  await bob.page.reload();
  await h.waitOnline(bob.page);
  assert.deepEqual(view(await h.messages(bob.page)), expected);
  assert.equal(await bob.page.locator(`#messages li.message[data-user-id="${annId}"] button`).count(), 0);
  await ann.page.reload();
  await h.waitOnline(ann.page);
  assert.deepEqual(view(await h.messages(ann.page)), expected);
  assert.equal(await ann.page.locator('#messages li.message.own:not(.deleted) .edit-button').count(), 1);
  assert.equal(await ann.page.locator('#messages li.message.deleted button').count(), 0);

  for (const page of [ann.page, bob.page]) {
    assert.deepEqual(page.problems.pageErrors, []);
    assert.deepEqual(page.problems.dialogs, [], 'no browser dialog: the confirmation is in the page');
  }
  await ann.context.close();
  await bob.context.close();
});

test('the docs screenshot: an edited message and someone typing', { timeout: 90000 }, async () => {
  const names = ['Ada Lovelace', 'Grace Hopper', 'Linus'];
  const people = [];
  for (const name of names) {
    const person = await h.newPerson(browser);
    await person.page.goto(`${node.url}/signin`);
    await person.page.locator('#name').fill(name);
    await person.page.getByRole('button', { name: 'Sign in' }).click();
    await person.page.waitForURL(`${node.url}/`);
    await person.page.goto(`${node.url}/rooms/general`);
    await h.waitOnline(person.page);
    people.push(person);
  }
  const [ada, grace, linus] = people.map((p) => p.page);
  await h.waitForUsers(ada, names);
  const say = async (page, text) => {
    await h.send(page, text);
    await h.waitForMessage(ada, text);
  };
  await say(grace, 'Morning all! The 0.3 release branch is cut.');
  await say(ada, 'Nice. Did the scrollback tests pass overnight?');
  await say(grace, 'All green: three nodes, one Redis, nginx in front.');
  await say(linus, 'Ship it.');
  await say(ada, 'Reviewing the page changes now, then I’ll tag it tomorow.');
  // Ada fixes her typo with ↑.
  await ada.locator('#message-input').focus();
  await ada.keyboard.press('ArrowUp');
  await ada.keyboard.press('Control+A');
  await ada.keyboard.type('Reviewing the page changes now, then I’ll tag it tomorrow.');
  await ada.keyboard.press('Enter');
  await ada.locator('#messages li.message.edited').waitFor();
  await grace.locator('#message-input').pressSequentially('Great, I’ll write the');
  await ada.locator('#typing', { hasText: 'Grace Hopper is typing…' }).waitFor();
  await ada.locator('#message-input').fill('Looks good to me');
  await ada.locator('#message-input').focus();
  await h.screenshot(ada, 'screenshot-docs');
  for (const person of people) await person.context.close();
});
