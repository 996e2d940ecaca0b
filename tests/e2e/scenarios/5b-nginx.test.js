'use strict';
// Scenario 5, production shape: nginx (the shipped nginx/nginx.conf and
// nginx/confab.conf, with only the node addresses, the listen address and the
// static root filled in) in front of two nodes and Redis. People chat through
// one address; the pages of one room land on one node (the page sends its
// room's partition, nginx keeps a partition's sockets together); that node
// drained with SIGTERM costs them nothing: the pages move to the other node,
// with no missing or doubled message and no left/join noise.
//
// Skipped (with the reason) while nginx/confab.conf is not in the checkout.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');
const h = require('../lib/harness');

const SITE = path.join(h.REPO, 'nginx', 'confab.conf');
const MAIN = path.join(h.REPO, 'nginx', 'nginx.conf');
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((file) => fs.existsSync(file));
const missing = !fs.existsSync(SITE) || !fs.existsSync(MAIN)
  ? 'nginx/confab.conf is not in this checkout yet'
  : !NGINX
    ? 'nginx is not installed'
    : null;
if (missing && process.env.CI === 'true' && fs.existsSync(SITE)) {
  throw new Error(`${missing} (tests/e2e/run installs it)`);
}

let redis;
let nodes = [];
let nginx;
let browser;

/** The shipped site with the node addresses, the listen address and the static root filled in. */
function siteConfig(port, addrs) {
  const out = [];
  let nodeLines = 0;
  for (const line of fs.readFileSync(SITE, 'utf8').split('\n')) {
    const trimmed = line.trimStart();
    const indent = line.slice(0, line.length - trimmed.length);
    if (trimmed.startsWith('server confab-')) {
      nodeLines += 1;
      if (nodeLines === 1) {
        const params = trimmed.slice(trimmed.indexOf(' ', 'server '.length) + 1);
        for (const addr of addrs) out.push(`${indent}server ${addr} ${params}`);
      }
    } else if (trimmed.startsWith('listen ')) {
      out.push(`${indent}listen 127.0.0.1:${port};`);
    } else if (trimmed.startsWith('root ')) {
      out.push(`${indent}root ${h.REPO};`);
    } else {
      out.push(line);
    }
  }
  assert.ok(nodeLines > 0, 'nginx/confab.conf lists its nodes as `server confab-N:3000 …;`');
  return out.join('\n');
}

async function startNginx(addrs) {
  const port = await h.freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'confab-e2e-nginx-'));
  fs.mkdirSync(path.join(dir, 'conf.d'));
  fs.copyFileSync(MAIN, path.join(dir, 'nginx.conf'));
  fs.copyFileSync('/etc/nginx/mime.types', path.join(dir, 'mime.types'));
  fs.writeFileSync(path.join(dir, 'conf.d', 'confab.conf'), siteConfig(port, addrs));
  fs.writeFileSync(
    path.join(dir, 'conf.d', '00-test-temp-paths.conf'),
    ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${path.join(dir, k)};`).join('\n'),
  );
  const root = process.getuid && process.getuid() === 0 ? 'user root;' : '';
  const log = fs.openSync(path.join(h.ARTIFACTS, 'logs', '5b-nginx.log'), 'a');
  const child = spawn(
    NGINX,
    ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', 'stderr', '-g', `daemon off; pid ${dir}/nginx.pid; ${root}`],
    { stdio: ['ignore', log, log] },
  );
  const url = `http://127.0.0.1:${port}`;
  await h.waitForHttp(`${url}/static/favicon.svg`, 200);
  return {
    url,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await h.waitForExit(child, 10000).catch(() => child.kill('SIGKILL'));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function connections(node) {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const match = /^confab_connections(?:\{[^}]*\})? (\d+)/m.exec(text);
  return match ? Number(match[1]) : 0;
}

before(async () => {
  if (missing) return;
  redis = await h.startRedis('5b-redis');
  const env = (id) => ({
    CONFAB_REDIS_URL: redis.url,
    CONFAB_NODE_ID: id,
    CONFAB_LEAVE_GRACE_MS: '5000',
    CONFAB_TRUSTED_PROXIES: '127.0.0.1/32',
  });
  nodes = [await h.startConfab('5b-node-1', { env: env('e2e-1') }), await h.startConfab('5b-node-2', { env: env('e2e-2') })];
  nginx = await startNginx(nodes.map((node) => `127.0.0.1:${node.port}`));
  browser = await h.launchBrowser();
});

after(async () => {
  await browser?.close();
  await nginx?.stop();
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

function notices(page) {
  return page.$$eval('#messages li.notice', (items) => items.map((li) => li.textContent));
}

test("through nginx: a room's pages on its partition's node, and a drained node costs nothing", { skip: missing || false, timeout: 90000 }, async () => {
  const alice = await h.newPerson(browser);
  const bob = await h.newPerson(browser);
  await h.signIn(alice.page, nginx.url, 'Alice');
  await h.signIn(bob.page, nginx.url, 'Bob');
  for (const { page } of [alice, bob]) await h.waitForUsers(page, ['Alice', 'Bob']);
  await h.send(alice.page, 'hello through nginx');
  await h.send(bob.page, 'hello back');
  for (const { page } of [alice, bob]) await h.waitForMessage(page, 'hello back');
  const noticesBefore = [await notices(alice.page), await notices(bob.page)];

  // Partition affinity: both pages' sockets are on one node. Drain that one.
  const counts = await Promise.all(nodes.map(connections));
  assert.deepEqual([...counts].sort(), [0, 2], `one room's sockets on one node (${counts})`);
  const drained = counts[0] === 2 ? 0 : 1;
  const exit = await nodes[drained].stop('SIGTERM');
  assert.equal(exit.code, 0);

  // Both pages are live again (through nginx, on the other node) by themselves.
  for (const { page } of [alice, bob]) await h.waitOnline(page, 40000);
  await h.send(bob.page, 'after the drain');
  await h.send(alice.page, 'still here');
  const expected = ['Alice: hello through nginx', 'Bob: hello back', 'Bob: after the drain', 'Alice: still here'];
  for (const { page } of [alice, bob]) {
    await h.waitForMessage(page, 'still here');
    await h.waitForMessage(page, 'after the drain');
    const shown = await conversation(page);
    assert.deepEqual(shown.slice(0, 2), expected.slice(0, 2));
    assert.deepEqual([...shown].sort(), [...expected].sort());
    await h.waitForUsers(page, ['Alice', 'Bob']);
  }
  assert.deepEqual([await notices(alice.page), await notices(bob.page)], noticesBefore, 'no left/join noise');
  await h.screenshot(alice.page, 'nginx-after-drain');
  for (const { page } of [alice, bob]) assert.deepEqual(page.problems.pageErrors, []);
  await alice.context.close();
  await bob.context.close();
});
