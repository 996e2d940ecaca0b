'use strict';
// Scenario 2: markup in messages and names shows as the literal text a person
// typed, runs nothing and opens no dialog; and the pages work under the strict
// Content-Security-Policy the server is to send (enforced here by the test
// when the server does not send it yet).

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

let node;
let browser;

before(async () => {
  node = await h.startConfab('2-escaping-csp');
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const IMG = '<img src=x onerror=alert(1)>';
const BOLD = '<b>bold</b> & "quotes" <script>alert(2)</script>';
// 27 characters: within the 32 a name may have.
const EVIL_NAME = '<img src=y onerror=alert(3)>';

test('markup in messages and names is shown as literal text, and nothing runs', { timeout: 60000 }, async () => {
  const eve = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.enforceCsp(eve.context);
  await h.enforceCsp(bob.context);

  await h.signIn(eve.page, node.url, EVIL_NAME);
  await h.signIn(bob.page, node.url, 'Bob');
  await h.waitForUsers(bob.page, [EVIL_NAME, 'Bob']);

  await h.send(eve.page, IMG);
  await h.send(eve.page, BOLD);
  // A last message after the two: once it is on screen, any image error or
  // script from the ones before it would have fired.
  await h.send(eve.page, 'sentinel');
  for (const { page } of [eve, bob]) {
    await h.waitForMessage(page, 'sentinel');
    const shown = await h.messages(page);
    assert.deepEqual(
      shown.map((m) => [m.author, m.text]),
      [
        [EVIL_NAME, IMG],
        [EVIL_NAME, BOLD],
        [EVIL_NAME, 'sentinel'],
      ],
    );
    // What a person reads is the literal text (innerText is what is rendered).
    const rendered = await page.locator('#messages li.message .text').first().innerText();
    assert.equal(rendered, IMG);
    assert.equal(await page.locator('#me').innerText(), page === eve.page ? EVIL_NAME : 'Bob');
    assert.ok(await page.locator('#users li.user .user-name', { hasText: EVIL_NAME }).isVisible());
    const injected = await page.evaluate(() => ({
      images: document.querySelectorAll('img[src="x"], img[src="y"]').length,
      markup: document.querySelectorAll('#app b, #app i, #app script').length,
    }));
    assert.deepEqual(injected, { images: 0, markup: 0 });
    assert.deepEqual(page.problems.dialogs, [], 'no dialog opened');
    assert.deepEqual(page.problems.pageErrors, []);
  }

  await eve.context.close();
  await bob.context.close();
});

test('the pages work under the strict CSP: no violation, no console error', { timeout: 60000 }, async () => {
  const ann = await h.newPerson(browser);
  await h.enforceCsp(ann.context);

  const signin = await ann.page.goto(`${node.url}/signin`);
  assert.match(signin.headers()['content-security-policy'], /script-src 'self'/);
  await h.signIn(ann.page, node.url, 'Ann');
  await ann.page.goto(`${node.url}/rooms/csp`);
  await h.waitOnline(ann.page);
  // The script ran (it connected and rendered the list), so it needs nothing inline.
  await h.waitForUsers(ann.page, ['Ann']);
  await h.send(ann.page, 'hello under CSP');
  await h.waitForMessage(ann.page, 'hello under CSP');
  // The phone panel and the composer's growth are the two places that could want styles.
  await ann.page.setViewportSize({ width: 375, height: 740 });
  await ann.page.locator('#sidebar-toggle').click();
  await ann.page.locator('#sidebar').waitFor({ state: 'visible' });
  await ann.page.locator('#message-input').fill('one\ntwo\nthree\nfour');

  assert.deepEqual(await h.cspViolations(ann.page), []);
  assert.deepEqual(ann.page.problems.consoleErrors, []);
  assert.deepEqual(ann.page.problems.pageErrors, []);

  // The served HTML itself: no inline script, no style attribute or block, no
  // inline event handler.
  const cookies = await ann.context.cookies(node.url);
  const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  for (const path of ['/signin', '/', '/rooms/dev']) {
    const response = await fetch(`${node.url}${path}`, { headers: { cookie }, redirect: 'manual' });
    assert.equal(response.status, 200, path);
    const html = await response.text();
    const scripts = html.match(/<script\b[^>]*>/gi) || [];
    for (const tag of scripts) assert.match(tag, /\ssrc="\/static\//, `${path}: only scripts from /static: ${tag}`);
    const forbidden = {
      'an inline script body': /<script\b[^>]*>(?!\s*<\/script>)/i,
      'a style attribute': /\sstyle\s*=/i,
      'a style block': /<style\b/i,
      'an inline event handler': /\son[a-z]+\s*=/i,
      'a javascript: URL': /javascript:/i,
      'a resource from another origin': /(?:src|href)="(?:https?:)?\/\//i,
    };
    for (const [what, pattern] of Object.entries(forbidden)) {
      const match = pattern.exec(html);
      assert.equal(match, null, `${path} has ${what}: ${match && html.slice(match.index, match.index + 80)}`);
    }
  }
  const server = (await fetch(`${node.url}/signin`)).headers.get('content-security-policy');
  if (server) {
    // Once the server sends its own policy, it must be at least as strict.
    for (const directive of ["script-src 'self'", "style-src 'self'", "object-src 'none'"]) {
      assert.ok(server.includes(directive), `server CSP has ${directive}: ${server}`);
    }
  }
  await ann.context.close();
});
