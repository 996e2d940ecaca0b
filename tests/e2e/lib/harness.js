'use strict';
/*
 * Shared plumbing for the end-to-end scenarios: real confab processes (and a
 * private redis-server), Debian's Chromium driven by playwright-core, and
 * helpers that read the page the way a person would (what is on screen).
 *
 * Everything waits on events (a log line, a DOM condition, a process exit)
 * with a deadline; nothing sleeps to synchronize.
 */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.CONFAB_BIN || path.join(REPO, 'target', 'debug', 'confab');
const ARTIFACTS = process.env.E2E_ARTIFACTS || path.join(REPO, 'target', 'e2e');
const LOGS = path.join(ARTIFACTS, 'logs');
const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
/** Shared by every node of a scenario, so a cookie made by one is valid on all (and after a restart). */
const SECRET = 'e2e-secret-0123456789abcdef-0123456789abcdef';

fs.mkdirSync(LOGS, { recursive: true });

/** Every child process we started, so none outlives the test file. */
const children = new Set();
function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** A TCP port that was free a moment ago (the OS picks it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves with the process's exit status; rejects after `ms`. */
function waitForExit(child, ms = 20000) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process ${child.pid} still running after ${ms} ms`)), ms);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/**
 * Spawns `command` (in `cwd`, default this process's) and resolves once a line
 * of its output matches `ready` (resolving with the match), rejecting if it
 * exits first or takes longer than `ms`. Output goes to
 * target/e2e/logs/<name>.log.
 */
function spawnAndWait(name, command, args, { env, cwd, ready, ms = 20000 }) {
  const log = fs.createWriteStream(path.join(LOGS, `${name}.log`), { flags: 'a' });
  const child = track(spawn(command, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
  return new Promise((resolve, reject) => {
    let done = false;
    let buffered = '';
    const finish = (error, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) {
        child.kill('SIGKILL');
        reject(error);
      } else {
        resolve(value);
      }
    };
    const timer = setTimeout(
      () => finish(new Error(`${name}: no ready line within ${ms} ms; see ${path.join(LOGS, name)}.log`)),
      ms,
    );
    const onData = (chunk) => {
      log.write(chunk);
      if (done) return;
      buffered += chunk.toString('utf8');
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        const match = ready.exec(line);
        if (match) {
          finish(null, { child, match });
          return;
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (error) => finish(error));
    child.on('exit', (code, signal) => {
      log.end();
      finish(new Error(`${name} exited (${code ?? signal}) before it was ready; see ${path.join(LOGS, name)}.log`));
    });
  });
}

/**
 * Starts one confab node and resolves once it logged `listening on http://ADDR`.
 * `bind` defaults to 127.0.0.1:0; pass a fixed one to restart on the same port.
 * The page's files are the ones built into the binary (no CONFAB_STATIC_DIR),
 * as in a deploy; `cwd` is the node's working directory.
 */
async function startConfab(name, { bind = '127.0.0.1:0', env = {}, cwd } = {}) {
  const { child, match } = await spawnAndWait(name, BIN, [], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      RUST_LOG: process.env.RUST_LOG || 'info',
      RUST_BACKTRACE: '1',
      CONFAB_BIND: bind,
      CONFAB_SECRET: SECRET,
      CONFAB_LEAVE_GRACE_MS: '0',
      ...env,
    },
    cwd,
    ready: /listening on (http:\/\/\S+)/,
  });
  const url = match[1];
  const node = {
    name,
    url,
    port: Number(new URL(url).port),
    child,
    /** Sends `signal` and waits for the process to end. */
    async stop(signal = 'SIGTERM', ms = 25000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return waitForExit(child, ms);
    },
  };
  await waitForHttp(`${url}/readyz`, 200);
  return node;
}

/** Polls `url` until it answers `status` (or the deadline passes). */
async function waitForHttp(url, status = 200, ms = 20000) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url, { redirect: 'manual' });
      if (response.status === status) return response;
      last = `status ${response.status}`;
    } catch (error) {
      last = error.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} did not answer ${status} within ${ms} ms (last: ${last})`);
}

/** A private redis-server on a free port: no persistence, never the machine's own on 6379. */
async function startRedis(name = 'redis', { port } = {}) {
  port = port || (await freePort());
  const { child } = await spawnAndWait(
    name,
    process.env.E2E_REDIS_SERVER || 'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { env: { PATH: process.env.PATH }, ready: /Ready to accept connections/ },
  );
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    child,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return waitForExit(child);
    },
  };
}

// ---------------------------------------------------------------------------
// Browser

const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Keep hidden tabs' timers running at full speed, so a tab in the
  // background still reconnects and renders on time during a test.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
  // A document the test fulfils itself (enforceCsp) has no server address, so
  // Chromium's Local Network Access check would treat it as public and block
  // its socket to 127.0.0.1.
  '--disable-features=LocalNetworkAccessChecks',
];

function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS });
}

/**
 * A new browser context (a separate person: own cookies), with a page that
 * records dialogs, console errors, page errors and CSP violations.
 */
async function newPerson(browser, options = {}) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    locale: 'en-GB',
    timezoneId: 'UTC',
    ...options,
  });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  watch(page);
  return { context, page };
}

/** Records what a person would never want to see happen on `page`. */
function watch(page) {
  const problems = { dialogs: [], consoleErrors: [], pageErrors: [], cspViolations: [] };
  page.problems = problems;
  page.on('dialog', (dialog) => {
    problems.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on('console', (message) => {
    if (message.type() === 'error') problems.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => problems.pageErrors.push(String(error)));
  // Playwright's init scripts are not subject to the page's CSP.
  page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (event) => {
      window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}:${event.lineNumber}`);
    });
  });
  return page;
}

/**
 * Lets the test hide and show `page` as switching browser tabs would: headless
 * Chromium reports every page as visible, so `document.hidden` is taken over
 * (before any page script runs) and `setHidden(page, bool)` flips it and fires
 * `visibilitychange`.
 */
function controlVisibility(page) {
  return page.addInitScript(() => {
    let hidden = false;
    Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => hidden });
    Object.defineProperty(Document.prototype, 'visibilityState', {
      configurable: true,
      get: () => (hidden ? 'hidden' : 'visible'),
    });
    window.__setHidden = (value) => {
      hidden = value;
      document.dispatchEvent(new Event('visibilitychange'));
    };
  });
}

function setHidden(page, hidden) {
  return page.evaluate((value) => window.__setHidden(value), hidden);
}

/** Signs in through the form as a person would, and waits until the chat is live. */
async function signIn(page, baseUrl, name) {
  await page.goto(`${baseUrl}/signin`);
  await page.locator('#name').fill(name);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${baseUrl}/`);
  await waitOnline(page);
}

async function waitOnline(page, ms = 15000) {
  await page.locator('#status[data-state="online"]').waitFor({ state: 'visible', timeout: ms });
  // The first `list` fills the online count: history has been replayed by then.
  await page.waitForFunction(() => /\d+ online/.test(document.getElementById('online-count').textContent), null, {
    timeout: ms,
  });
}

/** Types `text` into the message box and presses Enter. */
async function send(page, text) {
  const input = page.locator('#message-input');
  await input.fill(text);
  await input.press('Enter');
}

/**
 * The chat messages on screen, in order: id, author, text (without the
 * "(edited)" mark, which `.text` holds after the text), shown time, absolute
 * time, and whether it is marked edited or deleted.
 */
function messages(page) {
  return page.$$eval('#messages li.message', (items) =>
    items.map((li) => {
      const p = li.querySelector('.text');
      const mark = p.querySelector('.edited-mark');
      return {
        id: li.dataset.id,
        author: li.querySelector('.author').textContent,
        text: mark ? p.firstChild.data : p.textContent,
        time: li.querySelector('time.time').textContent,
        datetime: li.querySelector('time.time').getAttribute('datetime'),
        grouped: li.classList.contains('grouped'),
        own: li.classList.contains('own'),
        edited: mark !== null && mark.textContent === '(edited)',
        deleted: li.classList.contains('deleted'),
      };
    }),
  );
}

/** Waits until a message with exactly `text` (not counting "(edited)") is on screen. */
async function waitForMessage(page, text, ms = 15000) {
  await page.waitForFunction(
    (wanted) =>
      Array.from(document.querySelectorAll('#messages li.message .text')).some((p) => {
        const mark = p.querySelector('.edited-mark');
        return (mark ? p.firstChild.data : p.textContent) === wanted;
      }),
    text,
    { timeout: ms },
  );
}

/**
 * Posts `texts` as `page`'s user through a second socket of its own (a
 * second tab, `v=2` commands), each after the previous one came back, and
 * resolves with their ids. A `rate_limited` refusal is sent again once the
 * server's bucket has a token (10 a second). `commands` (optional) are sent
 * after the texts, each waiting for its frame or error; their results come
 * back as `results`.
 */
function postMessages(page, texts, commands = []) {
  return page.evaluate(
    async ({ texts, commands }) => {
      const room = document.getElementById('app').dataset.room;
      const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
      const ws = new WebSocket(`${scheme}${location.host}/ws/chat?room=${room}&v=2`);
      await new Promise((resolve, reject) => {
        ws.addEventListener('message', function onList(event) {
          if (JSON.parse(event.data).type === 'list') {
            ws.removeEventListener('message', onList);
            resolve();
          }
        });
        ws.addEventListener('close', () => reject(new Error('socket closed')));
      });
      // Sends `command` until it is not rate limited; resolves with the frame `done` picks, or the error.
      const run = (command, done) =>
        new Promise((resolve) => {
          const onMessage = (event) => {
            const frame = JSON.parse(event.data);
            if (frame.type === 'error' && frame.code === 'rate_limited') {
              ws.removeEventListener('message', onMessage);
              setTimeout(() => run(command, done).then(resolve), 110);
            } else if (frame.type === 'error' || done(frame)) {
              ws.removeEventListener('message', onMessage);
              resolve(frame);
            }
          };
          ws.addEventListener('message', onMessage);
          ws.send(JSON.stringify(command));
        });
      const ids = [];
      for (const text of texts) {
        const frame = await run({ type: 'chat', data: text }, (f) => f.type === 'chat' && f.data === text);
        ids.push(frame.id);
      }
      const results = [];
      for (const command of commands) {
        results.push(await run(command, (f) => f.type === command.type && f.data && f.data.id === command.id));
      }
      ws.close();
      return { ids, results };
    },
    { texts, commands },
  );
}

/** Names in the "People here" list, in the order shown. */
function userNames(page) {
  return page.$$eval('#users li.user .user-name', (items) => items.map((item) => item.textContent));
}

async function waitForUsers(page, names, ms = 15000) {
  const wanted = [...names].sort();
  await page
    .waitForFunction(
      (expected) => {
        const shown = Array.from(document.querySelectorAll('#users li.user .user-name'), (n) => n.textContent).sort();
        return JSON.stringify(shown) === JSON.stringify(expected);
      },
      wanted,
      { timeout: ms },
    )
    .catch(async (error) => {
      throw new Error(`users shown: ${JSON.stringify(await userNames(page))}, wanted ${JSON.stringify(wanted)}: ${error.message}`);
    });
}

/** Saves a screenshot into target/e2e/ and returns its path. */
async function screenshot(page, name, options = {}) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, ...options });
  return file;
}

/** CSP violations recorded on `page` since it loaded. */
function cspViolations(page) {
  return page.evaluate(() => window.__cspViolations || []);
}

/** The policy the server is to send on every page (issue "CSP"). */
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'none'; " +
  "form-action 'self'; frame-ancestors 'none'";

/**
 * Makes every document on `context` carry the strict CSP, whether or not the
 * server sends it yet (a server that does keeps its own header).
 */
async function enforceCsp(context) {
  await context.route(
    (url) => !url.pathname.startsWith('/static/') && !url.pathname.startsWith('/ws/'),
    async (route) => {
      if (route.request().resourceType() !== 'document') return route.continue();
      const response = await route.fetch({ maxRedirects: 0 });
      const headers = response.headers();
      if (!headers['content-security-policy']) headers['content-security-policy'] = CSP;
      return route.fulfill({ response, headers });
    },
  );
}

/** Runs axe-core on the page and returns the serious and critical violations. */
async function axe(page, context = 'body') {
  const source = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
  // evaluate() is not subject to the page's CSP, unlike an injected <script>.
  await page.evaluate(source);
  const result = await page.evaluate(
    (ctx) =>
      window.axe.run(ctx, {
        runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
        resultTypes: ['violations'],
      }),
    context,
  );
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
    }));
}

module.exports = {
  ARTIFACTS,
  BIN,
  controlVisibility,
  setHidden,
  CSP,
  REPO,
  SECRET,
  axe,
  cspViolations,
  enforceCsp,
  freePort,
  launchBrowser,
  messages,
  newPerson,
  postMessages,
  screenshot,
  send,
  signIn,
  startConfab,
  startRedis,
  userNames,
  waitForExit,
  waitForHttp,
  waitForMessage,
  waitForUsers,
  waitOnline,
  watch,
};
