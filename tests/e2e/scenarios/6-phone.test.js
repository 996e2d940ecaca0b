'use strict';
// Scenario 6: a phone (375×740, touch): everything is on screen and usable,
// nothing is cut off or scrolls sideways, long words wrap, and the rooms and
// people panel opens and closes.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('6-phone');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const PHONE = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

/** Every element matching `selector` that is shown lies inside the 375 px wide viewport. */
async function assertInside(page, selectors) {
  const boxes = await page.evaluate((list) => {
    const out = [];
    for (const selector of list) {
      for (const el of document.querySelectorAll(selector)) {
        const r = el.getBoundingClientRect();
        if (r.width === 0 && r.height === 0) continue;
        out.push({ selector, left: r.left, right: r.right, top: r.top, bottom: r.bottom });
      }
    }
    return out;
  }, selectors);
  const { width, height } = page.viewportSize();
  const outside = boxes.filter((b) => b.left < -0.5 || b.right > width + 0.5 || b.top < -0.5 || b.bottom > height + 0.5);
  assert.deepEqual(outside, [], 'cut off on a phone');
  return boxes;
}

async function assertNoSideways(page) {
  const widths = await page.evaluate(() => ({
    document: document.documentElement.scrollWidth,
    messages: document.getElementById('messages').scrollWidth - document.getElementById('messages').clientWidth,
  }));
  assert.ok(widths.document <= 375, `the page scrolls sideways: ${widths.document}px`);
  assert.equal(widths.messages, 0, 'the message log scrolls sideways');
}

test('phone width: usable, nothing cut off, long words wrap', { timeout: 60000 }, async () => {
  const zoe = await h.newPerson(browser, PHONE);
  const desk = await h.newPerson(browser);

  await zoe.page.goto(`${node.url}/signin`);
  await assertInside(zoe.page, ['.signin-card', '#name', 'button[type="submit"]']);
  await h.screenshot(zoe.page, 'signin-phone');
  // A person taps rather than clicks.
  await zoe.page.locator('#name').tap();
  await zoe.page.locator('#name').fill('Zoë Washburne-Alleyne');
  await zoe.page.getByRole('button', { name: 'Sign in' }).tap();
  await zoe.page.waitForURL(`${node.url}/`);
  await h.waitOnline(zoe.page);
  await h.signIn(desk.page, node.url, 'Malcolm Reynolds');

  const longWord = 'Supercalifragilisticexpialidocious'.repeat(6);
  const url = `https://example.com/${'very-long-path-segment/'.repeat(8)}index.html`;
  await h.send(desk.page, `A long word: ${longWord}`);
  await h.send(desk.page, url);
  await h.send(desk.page, 'Line one\nline two\n\n   indented line four');
  await zoe.page.locator('#message-input').tap();
  await zoe.page.locator('#message-input').fill('Sent from my phone');
  await zoe.page.getByRole('button', { name: 'Send' }).tap();
  await h.waitForMessage(zoe.page, 'Sent from my phone');
  await h.waitForMessage(zoe.page, url);
  await h.waitForMessage(zoe.page, `A long word: ${longWord}`);

  // Everything a person needs is on screen, inside the width.
  for (const selector of ['#sidebar-toggle', '#room-name', '#online-count', '#status', '#me', '.signout-form button', '#message-input', '#send-button']) {
    assert.ok(await zoe.page.locator(selector).isVisible(), `${selector} is visible`);
  }
  await assertInside(zoe.page, [
    '.topbar', '#sidebar-toggle', '#room-name', '#status', '#me', '.signout-form button',
    '#messages li', '#messages .text', '#messages .author', '#messages .time', '#message-input', '#send-button',
  ]);
  await assertNoSideways(zoe.page);
  // The long word wrapped onto several lines instead of widening the message.
  const wrapped = await zoe.page.locator('#messages li.message .text', { hasText: longWord }).evaluate((p) => ({
    lines: Math.round(p.getBoundingClientRect().height / parseFloat(getComputedStyle(p).lineHeight)),
    fits: p.scrollWidth <= p.clientWidth,
  }));
  assert.ok(wrapped.lines >= 3 && wrapped.fits, `long word wraps: ${JSON.stringify(wrapped)}`);
  // Line breaks and leading spaces inside a message are kept.
  const multi = await zoe.page.locator('#messages li.message .text', { hasText: 'Line one' }).innerText();
  assert.equal(multi, 'Line one\nline two\n\n   indented line four');
  // Touch targets are at least 40 px.
  for (const selector of ['#sidebar-toggle', '#send-button', '.signout-form button']) {
    const box = await zoe.page.locator(selector).boundingBox();
    assert.ok(box.height >= 36 && box.width >= 40, `${selector} is big enough to tap: ${JSON.stringify(box)}`);
  }
  await h.screenshot(zoe.page, 'chat-phone');

  // The panel with rooms and people opens from the ☰ button and closes again.
  assert.equal(await zoe.page.locator('#sidebar').isVisible(), false);
  await zoe.page.locator('#sidebar-toggle').tap();
  await zoe.page.locator('#sidebar').waitFor({ state: 'visible' });
  assert.equal(await zoe.page.locator('#sidebar-toggle').getAttribute('aria-expanded'), 'true');
  await h.waitForUsers(zoe.page, ['Malcolm Reynolds', 'Zoë Washburne-Alleyne']);
  await assertInside(zoe.page, ['#sidebar', '#room-list a', '#room-input', '#room-form button', '#users li']);
  await h.screenshot(zoe.page, 'chat-phone-panel');
  // A tap on the dimmed conversation puts the panel away.
  await zoe.page.touchscreen.tap(187, 700);
  await zoe.page.locator('#sidebar').waitFor({ state: 'hidden' });
  assert.equal(await zoe.page.locator('#sidebar-toggle').getAttribute('aria-expanded'), 'false');

  // Switching rooms from the panel works by touch.
  await zoe.page.locator('#sidebar-toggle').tap();
  await zoe.page.locator('#room-input').tap();
  await zoe.page.locator('#room-input').fill('Kitchen');
  assert.equal(await zoe.page.locator('#room-input').inputValue(), 'kitchen', 'room names are lowercased as typed');
  await zoe.page.locator('#room-form button').tap();
  await zoe.page.waitForURL(`${node.url}/rooms/kitchen`);
  await h.waitOnline(zoe.page);
  assert.equal(await zoe.page.locator('#room-name').textContent(), '#kitchen');
  await assertNoSideways(zoe.page);

  assert.deepEqual(zoe.page.problems.pageErrors, []);
  await zoe.context.close();
  await desk.context.close();
});
