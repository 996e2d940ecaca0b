'use strict';
// Scenario 1: two people in two browser contexts sign in, see each other,
// chat, see the same conversation in the same order with names and times, and
// sign out back to the sign-in page.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('1-two-users');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

test('two users chat, see the same conversation, and sign out', { timeout: 60000 }, async () => {
  const alice = await h.newPerson(browser);
  const bob = await h.newPerson(browser);

  // A person without a cookie lands on the sign-in page.
  await alice.page.goto(`${node.url}/`);
  await alice.page.waitForURL(`${node.url}/signin`);
  await alice.page.getByLabel('Your name').waitFor();
  await h.screenshot(alice.page, 'signin');

  await h.signIn(alice.page, node.url, 'Alice Liddell');
  await h.signIn(bob.page, node.url, 'Bob Stone');

  for (const { page } of [alice, bob]) {
    await h.waitForUsers(page, ['Alice Liddell', 'Bob Stone']);
    assert.equal(await page.locator('#online-count').textContent(), '2 online');
    assert.equal(await page.locator('#status .status-text').textContent(), 'Online');
  }
  assert.equal(await alice.page.locator('#me').textContent(), 'Alice Liddell');
  assert.equal(await alice.page.locator('#users li.user.own .user-name').textContent(), 'Alice Liddell');
  // Bob's arrival is announced on Alice's screen.
  await alice.page.locator('#messages li.notice', { hasText: 'Bob Stone joined.' }).waitFor();

  const script = [
    [alice, 'Hi Bob!'],
    [bob, 'Hello Alice, good to see you here.'],
    [alice, 'Are you coming to the meetup on Thursday?'],
    [alice, 'It starts at seven.'],
    [bob, 'Yes — see you there!'],
  ];
  for (const [person, text] of script) {
    await h.send(person.page, text);
    // The box is cleared once the message went out.
    assert.equal(await person.page.locator('#message-input').inputValue(), '');
    await h.waitForMessage(person.page, text);
  }
  const last = script[script.length - 1][1];
  await h.waitForMessage(alice.page, last);
  await h.waitForMessage(bob.page, last);

  const onAlice = await h.messages(alice.page);
  const onBob = await h.messages(bob.page);
  const expected = script.map(([person, text]) => ({
    author: person === alice ? 'Alice Liddell' : 'Bob Stone',
    text,
  }));
  const view = (list) => list.map(({ id, author, text, datetime }) => ({ id, author, text, datetime }));
  assert.deepEqual(onAlice.map(({ author, text }) => ({ author, text })), expected);
  assert.deepEqual(view(onAlice), view(onBob), 'both screens show the same messages in the same order');
  const ids = onAlice.map((m) => BigInt(m.id));
  for (let i = 1; i < ids.length; i += 1) assert.ok(ids[i] > ids[i - 1], 'ids grow');

  // Times: relative on screen, absolute in the tooltip, machine-readable in datetime.
  for (const m of onAlice) {
    assert.equal(m.time, 'just now');
    assert.ok(Math.abs(Date.parse(m.datetime) - Date.now()) < 60000, `time ${m.datetime} is now`);
  }
  const title = await alice.page.locator('#messages li.message time.time').first().getAttribute('title');
  assert.match(title, /\d{4}/, 'the absolute time (with the year) is in the tooltip');

  // Own messages are marked; a follow-up by the same sender is grouped under one name.
  assert.deepEqual(onAlice.map((m) => m.own), [true, false, true, true, false]);
  assert.deepEqual(onBob.map((m) => m.own), [false, true, false, false, true]);
  assert.deepEqual(onAlice.map((m) => m.grouped), [false, false, false, true, false]);
  const visibleAuthors = await alice.page.$$eval('#messages li.message .author', (nodes) =>
    nodes.filter((n) => n.getBoundingClientRect().width > 1).map((n) => n.textContent),
  );
  assert.deepEqual(visibleAuthors, ['Alice Liddell', 'Bob Stone', 'Alice Liddell', 'Bob Stone']);

  // Avatars: initials over the user's colored circle, the image loaded.
  const avatars = await alice.page.$$eval('#messages li.message:not(.grouped) .avatar', (nodes) =>
    nodes.map((n) => ({
      initials: n.querySelector('.avatar-initials').textContent,
      loaded: (n.querySelector('img.avatar-img')?.naturalWidth ?? 0) > 0,
      visible: n.getBoundingClientRect().width > 20,
    })),
  );
  assert.deepEqual(avatars, [
    { initials: 'AL', loaded: true, visible: true },
    { initials: 'BS', loaded: true, visible: true },
    { initials: 'AL', loaded: true, visible: true },
    { initials: 'BS', loaded: true, visible: true },
  ]);

  await alice.page.locator('#message-input').focus();
  await h.screenshot(alice.page, 'chat-desktop');
  await h.screenshot(bob.page, 'chat-desktop-bob');

  for (const { page } of [alice, bob]) {
    assert.deepEqual(page.problems.pageErrors, []);
    assert.deepEqual(page.problems.consoleErrors, []);
    assert.deepEqual(page.problems.dialogs, []);
  }

  // Sign out: back to the sign-in page; the cookie is gone; Bob sees Alice leave.
  await alice.page.getByRole('button', { name: 'Sign out' }).click();
  await alice.page.waitForURL(`${node.url}/signin`);
  await alice.page.getByLabel('Your name').waitFor();
  await alice.page.goto(`${node.url}/`);
  await alice.page.waitForURL(`${node.url}/signin`);
  await bob.page.locator('#messages li.notice', { hasText: 'Alice Liddell left.' }).waitFor();
  await h.waitForUsers(bob.page, ['Bob Stone']);
  assert.equal(await bob.page.locator('#online-count').textContent(), '1 online');

  await alice.context.close();
  await bob.context.close();
});

test('a lively room: three people, rooms visited, grouped messages (the README screenshot)', { timeout: 60000 }, async () => {
  const ada = await h.newPerson(browser);
  const grace = await h.newPerson(browser);
  const linus = await h.newPerson(browser);
  await h.signIn(ada.page, node.url, 'Ada Lovelace');
  // Rooms she has been to are listed in the switcher, newest first, after lobby.
  for (const room of ['design', 'release-train']) {
    await ada.page.goto(`${node.url}/rooms/${room}`);
    await h.waitOnline(ada.page);
  }
  // A room of its own, so the first test's conversation is not in the picture.
  const general = `${node.url}/rooms/general`;
  await ada.page.goto(general);
  await h.waitOnline(ada.page);
  for (const [person, name] of [[grace, 'Grace Hopper'], [linus, 'Linus']]) {
    await h.signIn(person.page, node.url, name);
    await person.page.goto(general);
    await h.waitOnline(person.page);
  }

  const script = [
    [grace, 'Morning all! The 0.2 release branch is cut.'],
    [ada, 'Nice. Did the cluster tests pass overnight?'],
    [grace, 'All green: three nodes, one Redis, nginx in front.'],
    [grace, 'I also restarted a node in the middle of a chat. Nobody noticed 🙂'],
    [linus, 'Ship it.'],
    [ada, "Reviewing the page changes now, then I'll tag it."],
  ];
  for (const [person, text] of script) {
    await h.send(person.page, text);
    await h.waitForMessage(ada.page, text);
  }
  await h.waitForUsers(ada.page, ['Ada Lovelace', 'Grace Hopper', 'Linus']);
  assert.equal(await ada.page.locator('#online-count').textContent(), '3 online');
  const rooms = await ada.page.$$eval('#room-list a.room-link', (links) => links.map((a) => a.textContent));
  assert.deepEqual(rooms, ['#lobby', '#general', '#release-train', '#design']);
  assert.equal(await ada.page.locator('#room-list a[aria-current="page"]').textContent(), '#general');
  assert.deepEqual((await h.messages(ada.page)).map((m) => m.grouped), [false, false, false, true, false, false]);
  await ada.page.locator('#message-input').fill('Looks good to me');
  await h.screenshot(ada.page, 'readme');
  for (const person of [ada, grace, linus]) await person.context.close();
});
