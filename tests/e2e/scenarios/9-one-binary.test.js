'use strict';
// Scenario 9: the binary carries its page. Started from an empty directory,
// with no static/ beside it and no CONFAB_STATIC_DIR, it serves a sign-in page
// and a chat page whose script, stylesheet, favicon and avatars all load, and
// the chat works.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let empty;
let node;
let browser;

before(async () => {
  empty = fs.mkdtempSync(path.join(os.tmpdir(), 'confab-e2e-empty-'));
  node = await h.startConfab('9-one-binary', { cwd: empty });
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
  if (empty) fs.rmSync(empty, { recursive: true, force: true });
});

test('started from an empty directory, the page loads every file it names and chats', { timeout: 60000 }, async () => {
  const ann = await h.newPerson(browser);
  /** Every /static/ answer the browser got: "STATUS /static/path". */
  const statics = [];
  ann.page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.pathname.startsWith('/static/')) statics.push(`${response.status()} ${url.pathname}`);
  });
  const failed = [];
  ann.page.on('requestfailed', (request) => failed.push(request.url()));

  await ann.page.goto(`${node.url}/signin`);
  // The stylesheet arrived and applies: the sign-in card is styled, not the browser's default.
  const styled = await ann.page.evaluate(() =>
    Array.from(document.styleSheets).some((sheet) => sheet.href && sheet.href.includes('/static/style.css') && sheet.cssRules.length > 0),
  );
  assert.ok(styled, 'style.css is loaded and parsed');
  await h.screenshot(ann.page, 'one-binary-signin');

  // Signing in goes online only if app.js runs: it opens the socket and renders the user list.
  await h.signIn(ann.page, node.url, 'Ann from nowhere');
  await h.waitForUsers(ann.page, ['Ann from nowhere']);
  await h.send(ann.page, 'Served by one file.');
  await h.waitForMessage(ann.page, 'Served by one file.');
  // The avatar image (an embedded SVG) decoded.
  await ann.page.waitForFunction(() => {
    const img = document.querySelector('#users li.user img.avatar-img');
    return img && img.complete && img.naturalWidth > 0;
  });
  await h.screenshot(ann.page, 'one-binary-chat');

  for (const file of ['/static/style.css', '/static/app.js', '/static/avatars/']) {
    assert.ok(
      statics.some((answer) => /^(200|304) /.test(answer) && answer.includes(file)),
      `${file} was fetched: ${JSON.stringify(statics)}`,
    );
  }
  assert.deepEqual(statics.filter((answer) => !/^(200|304) /.test(answer)), [], 'no static file failed');
  assert.deepEqual(failed, [], 'no request failed');
  assert.deepEqual(ann.page.problems.consoleErrors, []);
  assert.deepEqual(ann.page.problems.pageErrors, []);
  assert.deepEqual(fs.readdirSync(empty), [], 'the node wrote nothing to its working directory');
});
