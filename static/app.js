/*
 * confab chat page.
 *
 * Talks to the server over one WebSocket (`/ws/chat?room=R&v=2&since=N`, see
 * PROTOCOL.md, "Conversations": JSON commands `chat`, `typing`, `edit`,
 * `delete`), pages back through `GET /api/rooms/R/messages?before=ID`, and
 * renders what it receives into the markup of templates/room.html. Plain
 * ES2020 with no framework and no build step: the page is served under
 * `script-src 'self'; style-src 'self'`, so nothing here evaluates strings,
 * writes inline styles into markup or uses innerHTML for data that came from
 * the server.
 *
 * Structure: state at the top, then the socket (connect, handleFrame,
 * scheduleReconnect), rendering (renderMessage, renderNotice, renderUsers,
 * renderRooms), scrollback (loadOlder), typing, editing and deleting, the
 * composer, and finally init() wiring the DOM events.
 *
 * The log is kept sorted by id: live frames come in id order and are
 * appended, a scrollback page is merged in above, and an item whose id is
 * already in the log is never added again.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------------------
  // Constants

  const ROOM_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/;
  const RECENT_ROOMS_KEY = 'confab.recentRooms';
  const MAX_RECENT_ROOMS = 10;

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  // A connection that stayed up this long was a real session, not a flapping
  // one, so the next failure starts the back-off from the beginning again.
  const STABLE_CONNECTION_MS = 10000;

  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const TIME_REFRESH_MS = 30000;
  const NOTICE_TIMEOUT_MS = 10000;
  // Px from the bottom of the log within which we still count as "at the
  // bottom" and follow new messages.
  const STICKY_BOTTOM_PX = 80;
  // Bounds that keep a tab left open for days from growing without limit.
  const MAX_SEEN_IDS = 5000;
  const MAX_RENDERED_ITEMS = 1000;
  // Sent texts waiting to be seen back (or refused); only the newest few matter.
  const MAX_UNCONFIRMED = 20;
  // Edits and deletes of messages not (yet) in the log, kept for when a
  // scrollback page brings them in.
  const MAX_PENDING_CHANGES = 500;

  // Scrollback: messages per page, and how close to the top (px) the reader
  // must scroll before the previous page is fetched.
  const SCROLLBACK_PAGE = 50;
  const LOAD_OLDER_PX = 150;

  // Typing: the server passes on one `typing` per user per 2 s, so sending
  // more often is wasted (the margin keeps one that is sent just after the
  // window from arriving just inside it); a name stays shown this long after
  // its last one.
  const TYPING_SEND_MS = 2250;
  const TYPING_SHOW_MS = 4000;
  // After a reconnect, how long people who were online before may take to come
  // back without their `join` being shown (pages retry within 15 s).
  const RETURN_WINDOW_MS = 30000;

  const CLOSE_POLICY = 1008;
  const CLOSE_INVALID_USER = 4001;
  const CLOSE_INVALID_ROOM = 4004;
  const CLOSE_KICKED = 4003;
  // How long a moderator's "Remove" keeps the user out of the room.
  const KICK_BAN_SECONDS = 600;

  // The server's CONFAB_MAX_MESSAGE_CHARS, rendered into the page.
  const MAX_MESSAGE_CHARS = Number(document.getElementById('app').dataset.maxMessageChars) || 2000;

  const ERROR_TEXT = {
    too_long: `That message is too long (max ${MAX_MESSAGE_CHARS} characters).`,
    forbidden: 'You can only edit or delete your own messages.',
    not_found: 'That message can no longer be changed: it was deleted or is too old.',
    bad_command: 'The server did not understand that. Reload the page and try again.',
    rate_limited: "You're sending messages too fast. Wait a moment.",
    unavailable:
      'Your message could not be sent — the chat service is temporarily unavailable. Try again.',
  };
  const NOT_CONNECTED_TEXT = 'Not connected — your message was not sent.';
  const TOO_MANY_TABS_TEXT =
    'You have too many chat tabs open. Close some and this one connects by itself.';
  const UNKNOWN_ERROR_TEXT = 'Your message could not be sent. Try again.';
  const EMPTY_EDIT_TEXT = 'A message cannot be empty. To remove it, use Delete.';
  const SCROLLBACK_FAILED_TEXT = 'Earlier messages could not be loaded.';
  const DELETED_TEXT = 'message deleted';

  // ---------------------------------------------------------------------------
  // DOM

  const $ = (id) => document.getElementById(id);
  const el = {
    app: $('app'),
    status: $('status'),
    reconnectNow: $('reconnect-now'),
    onlineCount: $('online-count'),
    sidebar: $('sidebar'),
    sidebarToggle: $('sidebar-toggle'),
    roomList: $('room-list'),
    roomForm: $('room-form'),
    roomInput: $('room-input'),
    users: $('users'),
    messages: $('messages'),
    list: $('message-list'),
    historyTop: $('history-top'),
    historyStatus: $('history-status'),
    historyRetry: $('history-retry'),
    typing: $('typing'),
    newMessages: $('new-messages'),
    noticeBar: $('notice-bar'),
    emptyState: $('empty-state'),
    charCount: $('char-count'),
    composer: $('composer'),
    input: $('message-input'),
  };

  // ---------------------------------------------------------------------------
  // State

  const room = el.app.dataset.room || 'lobby';
  const me = {
    id: el.app.dataset.userId || '',
    name: el.app.dataset.userName || '',
    image: el.app.dataset.userImage || '',
    role: el.app.dataset.userRole || '',
  };
  const baseTitle = document.title;

  /** The current socket, or null while disconnected. */
  let socket = null;
  /** Consecutive failed attempts; drives the back-off. */
  let attempt = 0;
  let reconnectTimer = 0;
  let countdownTimer = 0;
  let stableTimer = 0;
  /** Set once the server told us not to come back (bad room); no more retries. */
  let stopped = false;
  /**
   * A moderator removed us (4003): no automatic retries, but "Retry now" may try
   * again, since a ban ends (the server does not say when).
   */
  let removed = false;
  /** Whether a socket has ever opened; the first load says "Connecting", later ones "Reconnecting". */
  let everConnected = false;
  /** The last close was 1008 (too many sockets): its notice stays until a connection works. */
  let policyRefused = false;

  /**
   * Ids already shown. Ids only grow (PROTOCOL.md guarantee 1), so
   * `highestId` alone rejects a replay after a reconnect; the set is a second
   * guard that does not depend on that ordering. Bounded to the newest
   * MAX_SEEN_IDS.
   */
  const seenIds = new Set();
  let highestId = 0;
  /** True once the first `list` arrived: frames before it are history, not news. */
  let historyLoaded = false;

  /** Online users by id. */
  const users = new Map();
  /**
   * Ids of the users who were online when our socket dropped. After a server
   * restart everyone reconnects and is announced again; for them that `join`
   * is not news, so it is not shown. Forgotten RETURN_WINDOW_MS after we are back.
   */
  const returning = new Set();
  let returningTimer = 0;

  /**
   * Texts sent on a socket and not yet seen back as our own `chat` frame, oldest
   * first. An `error` frame does not say which message it refuses, but the one
   * just sent is by far the likeliest (a refused burst refuses its newest), so
   * the newest is put back in the box.
   */
  const unconfirmed = [];
  let noticeTimer = 0;
  let unread = 0;

  /** Sender and time of each rendered chat message, for grouping. */
  const messageMeta = new WeakMap();

  /**
   * Every item in the log (messages and notices) by id: the guard that keeps a
   * scrollback page and the live history from showing anything twice.
   */
  const items = new Map();
  /**
   * Edits and deletes for messages not in the log (older than what is shown,
   * or trimmed), by message id: applied if a scrollback page brings the
   * message in, in case the page was read before the change.
   */
  const pendingChanges = new Map();

  /** Scrollback: a page request in flight; the room's first message reached; the last request failed. */
  let olderLoading = false;
  let reachedBeginning = false;
  let olderFailed = false;

  /** Who is typing, by user id: `{ name, timer }`, in the order they started. */
  const typists = new Map();
  /** When this page last told the server that its user is typing, and the pending catch-up. */
  let typingSentAt = 0;
  let typingTimer = 0;

  /** What this page sent last: an `error` frame refuses a chat, an edit or a delete. */
  let lastCommand = 'chat';
  /** The message being edited in place, if any. */
  let editing = null;

  // ---------------------------------------------------------------------------
  // Socket

  function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    // v=2: text frames are JSON commands (chat, typing, edit, delete).
    let url = `${scheme}${location.host}/ws/chat?room=${encodeURIComponent(room)}&v=2`;
    // The room's partition: only a routing hint, for nginx to keep a partition's sockets on
    // one node (confab itself ignores it).
    if (el.app.dataset.partition) url += `&partition=${el.app.dataset.partition}`;
    if (highestId > 0) url += `&since=${highestId}`;
    return url;
  }

  function connect() {
    clearReconnectTimers();
    if (stopped) return;
    setStatus(everConnected ? 'reconnecting' : 'connecting');
    // History is about to be replayed; screen readers should not read it all out.
    el.messages.setAttribute('aria-busy', 'true');

    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch {
      // Only a malformed URL throws here; treat it like a failed connection.
      scheduleReconnect();
      return;
    }
    socket = ws;

    // Each handler checks `ws === socket` so that events from a socket we have
    // already given up on cannot disturb the current one.
    ws.addEventListener('open', () => {
      if (ws !== socket) return;
      everConnected = true;
      setStatus('online');
      stableTimer = setTimeout(() => { attempt = 0; }, STABLE_CONNECTION_MS);
    });
    ws.addEventListener('message', (event) => {
      if (ws !== socket || typeof event.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // Not ours to fix; one bad frame should not end the session.
      }
      if (frame && typeof frame === 'object') handleFrame(frame);
    });
    ws.addEventListener('close', (event) => {
      if (ws !== socket) return;
      socket = null;
      clearTimeout(stableTimer);
      el.messages.removeAttribute('aria-busy');
      // An edit or delete in flight may be lost with the socket (if it was
      // applied, its frame comes back after the reconnect): stop looking busy.
      for (const li of el.list.querySelectorAll('li.message.saving')) li.classList.remove('saving');
      handleClose(event.code, event.reason);
    });
    // An `error` event is always followed by `close`, which does the work.
  }

  function handleClose(code, reason) {
    if (code === CLOSE_INVALID_USER) {
      // The cookie is missing or no longer valid: only signing in again helps.
      stopped = true;
      setStatus('offline', 'Signed out');
      location.assign('/signin');
      return;
    }
    if (code === CLOSE_KICKED) {
      // A moderator removed us (reason "Kicked"), or we are banned from the
      // room ("Banned"): reconnecting by itself would not help, and must not
      // look like it; "Retry now" stays, for when the ban is over.
      stopped = true;
      removed = true;
      setStatus('offline', 'Removed');
      // Nothing typed here could be sent: say so by taking the box away.
      el.input.disabled = true;
      for (const button of el.composer.querySelectorAll('button')) button.disabled = true;
      showNotice(
        reason === 'Banned'
          ? 'You are banned from this room for now.'
          : 'A moderator removed you from this room.',
        { sticky: true },
      );
      return;
    }
    if (code === CLOSE_INVALID_ROOM) {
      stopped = true;
      setStatus('offline', 'Room unavailable');
      showNotice('This room name is not valid, so the room cannot be opened.', { sticky: true });
      return;
    }
    if (code === CLOSE_POLICY) {
      // Too many sockets for this user (or address): closing other tabs frees
      // a place, so keep trying, and say why until a connection succeeds.
      showNotice(TOO_MANY_TABS_TEXT, { sticky: true });
      policyRefused = true;
    }
    // 1012 (server restart), 1013 (try again later), 1006 (network) and
    // anything else: the server or the path to it is expected to come back.
    clearTimeout(returningTimer);
    for (const id of users.keys()) returning.add(id);
    scheduleReconnect();
  }

  /**
   * Retries with capped exponential back-off and full jitter (a random delay
   * between 0 and the cap), so that thousands of pages dropped by the same
   * server restart do not all come back in the same instant.
   */
  function scheduleReconnect() {
    clearReconnectTimers();
    if (stopped) return;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = Math.random() * ceiling;
    attempt += 1;

    if (navigator.onLine === false) {
      // The `online` event reconnects at once; the timer is a fallback in case
      // the browser's idea of being offline is wrong.
      setStatus('offline', 'Offline — waiting for the network…');
      reconnectTimer = setTimeout(connect, BACKOFF_CAP_MS);
      return;
    }

    const due = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      setStatus('reconnecting', `Reconnecting in ${seconds} s…`);
    };
    tick();
    countdownTimer = setInterval(tick, 1000);
    reconnectTimer = setTimeout(connect, delay);
  }

  /** "Retry now": skips the wait, or tries again after a removal. */
  function retryNow() {
    if (removed) {
      removed = false;
      stopped = false;
      el.input.disabled = false;
      for (const button of el.composer.querySelectorAll('button')) button.disabled = false;
      clearNotice();
    }
    reconnectNow();
  }

  /** Skips the wait: used on `online`, when the tab comes back, and by "Retry now". */
  function reconnectNow() {
    if (stopped || socket) return;
    attempt = 0;
    connect();
  }

  function clearReconnectTimers() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    reconnectTimer = 0;
    countdownTimer = 0;
  }

  const STATUS_TEXT = {
    connecting: 'Connecting…',
    online: 'Online',
    reconnecting: 'Reconnecting…',
    offline: 'Offline',
  };

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.querySelector('.status-text').textContent = text || STATUS_TEXT[state];
    el.reconnectNow.hidden = !(state === 'reconnecting' || (state === 'offline' && (!stopped || removed)));
  }

  // ---------------------------------------------------------------------------
  // Frames

  function handleFrame(frame) {
    switch (frame.type) {
      case 'chat':
      case 'join':
      case 'left':
        handleEvent(frame);
        break;
      case 'edit':
      case 'delete':
        handleChange(frame);
        break;
      case 'typing':
        handleTyping(frame);
        break;
      case 'list':
        handleList(frame);
        break;
      case 'error':
        handleError(frame);
        break;
      default:
        // Unknown types are ignored so that the server can add new ones.
        break;
    }
  }

  /** A chat, join or left frame: shown once, in id order. */
  function handleEvent(frame) {
    const id = frame.id;
    if (!Number.isSafeInteger(id) || id <= highestId || seenIds.has(id)) return;
    if (typeof frame.room === 'string' && frame.room !== room) return;
    rememberId(id);
    // Already brought in by a scrollback page that raced this frame.
    if (items.has(id)) return;

    const user = normalizeUser(frame.user);
    const ts = Number.isFinite(frame.ts) ? frame.ts : Date.now();
    const text = typeof frame.data === 'string' ? frame.data : '';
    const own = user !== null && user.id === me.id;

    if (frame.type === 'chat') {
      if (own) {
        // Delivered: nothing to restore.
        const index = unconfirmed.indexOf(text);
        if (index !== -1) unconfirmed.splice(index, 1);
      }
      // Their message is here: they are no longer typing it.
      if (user && typists.has(user.id)) stopTyping(user.id);
      appendItem(renderChat(id, user, frame), { own });
      updateEmptyState();
      if (!own) countUnread();
    } else {
      // Once the page has had a user list, a `join` for someone listed (or
      // online before our reconnect), or a `left` for someone we never saw,
      // is the echo of a reconnect or a server restart, not news.
      let echo = false;
      if (historyLoaded && user !== null) {
        const wasReturning = returning.delete(user.id);
        echo = frame.type === 'join' ? users.has(user.id) || wasReturning : !users.has(user.id) && !wasReturning;
      }
      if (!echo) appendItem(renderNotice(id, text, ts), { own: false });
      if (user) {
        if (frame.type === 'join') users.set(user.id, user);
        else {
          users.delete(user.id);
          if (typists.has(user.id)) stopTyping(user.id);
        }
        renderUsers();
      }
    }
  }

  function rememberId(id) {
    highestId = id;
    seenIds.add(id);
    if (seenIds.size > MAX_SEEN_IDS) {
      // Sets iterate in insertion order, so the first entry is the oldest.
      seenIds.delete(seenIds.values().next().value);
    }
  }

  /**
   * An `edit` or `delete` frame: a new id of its own (so it is deduplicated and
   * resumed from like any frame) naming the message it changes.
   */
  function handleChange(frame) {
    const id = frame.id;
    if (!Number.isSafeInteger(id) || id <= highestId || seenIds.has(id)) return;
    if (typeof frame.room === 'string' && frame.room !== room) return;
    rememberId(id);
    const change = normalizeChange(frame);
    if (!change) return;
    const li = items.get(change.target);
    if (li && li.classList.contains('message')) {
      applyChange(li, change);
    } else {
      rememberChange(change);
    }
  }

  /** `{ target, kind, text, ts }` from an edit/delete frame, or null if it is malformed. */
  function normalizeChange(frame) {
    const data = frame.data;
    if (!data || typeof data !== 'object' || !Number.isSafeInteger(data.id)) return null;
    const ts = Number.isFinite(frame.ts) ? frame.ts : Date.now();
    if (frame.type === 'delete') return { target: data.id, kind: 'delete', text: '', ts };
    if (typeof data.text !== 'string') return null;
    return { target: data.id, kind: 'edit', text: data.text, ts };
  }

  /** Keeps the latest change per message; a delete is final. */
  function rememberChange(change) {
    const known = pendingChanges.get(change.target);
    if (known && known.kind === 'delete') return;
    pendingChanges.delete(change.target);
    pendingChanges.set(change.target, change);
    if (pendingChanges.size > MAX_PENDING_CHANGES) {
      pendingChanges.delete(pendingChanges.keys().next().value);
    }
  }

  /** The full list of who is online: replaces whatever we had. */
  function handleList(frame) {
    users.clear();
    if (Array.isArray(frame.data)) {
      for (const raw of frame.data) {
        const user = normalizeUser(raw);
        if (user) users.set(user.id, user);
      }
    }
    renderUsers();
    el.messages.removeAttribute('aria-busy');
    if (policyRefused) {
      policyRefused = false;
      clearNotice();
    }
    if (!historyLoaded) {
      historyLoaded = true;
      scrollToBottom();
      // A short history leaves the log without a scroll bar: fill it from scrollback.
      maybeLoadOlder();
    }
    if (returning.size > 0) {
      clearTimeout(returningTimer);
      returningTimer = setTimeout(() => returning.clear(), RETURN_WINDOW_MS);
    }
    updateEmptyState();
  }

  function handleError(frame) {
    showNotice(ERROR_TEXT[frame.code] || UNKNOWN_ERROR_TEXT);
    // A refused edit or delete leaves the message as it was; nothing goes
    // back in the message box (a chat is never `forbidden` or `not_found`).
    if (lastCommand !== 'chat' || frame.code === 'forbidden' || frame.code === 'not_found') {
      for (const li of el.list.querySelectorAll('li.message.saving')) li.classList.remove('saving');
      return;
    }
    // Give the refused text back, unless the user has started typing again.
    const refused = unconfirmed.pop();
    if (refused !== undefined && el.input.value.trim() === '') {
      el.input.value = refused;
      onInputChange();
    }
  }

  /** Server data is untrusted: keep only string fields and never fail on shape. */
  function normalizeUser(raw) {
    if (!raw || typeof raw !== 'object' || typeof raw.id !== 'string') return null;
    return {
      id: raw.id,
      name: typeof raw.name === 'string' ? raw.name : '',
      image: typeof raw.image === 'string' ? raw.image : '',
    };
  }

  // ---------------------------------------------------------------------------
  // Rendering: messages

  /**
   * A chat frame (live, replayed or from a scrollback page) as a message in
   * its latest state: `deleted` or `edited` as the server marks it.
   */
  function renderChat(id, user, frame) {
    const ts = Number.isFinite(frame.ts) ? frame.ts : Date.now();
    const text = typeof frame.data === 'string' ? frame.data : '';
    const own = user !== null && user.id === me.id;
    const li = renderMessage(id, user, text, ts, own);
    if (frame.deleted === true) markDeleted(li);
    else if (frame.edited === true) markEdited(li, null);
    return li;
  }

  function renderMessage(id, user, text, ts, own) {
    const li = document.createElement('li');
    li.className = 'message';
    li.dataset.id = String(id);
    const userId = user ? user.id : '';
    li.dataset.userId = userId;
    if (own) li.classList.add('own');
    messageMeta.set(li, { userId, ts });

    const body = document.createElement('div');
    body.className = 'message-body';

    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = user ? user.name : 'Unknown';
    meta.append(author, renderTime(ts));

    const p = document.createElement('p');
    p.className = 'text';
    p.id = `text-${id}`;
    p.textContent = text;

    body.append(meta, p);
    // Only the author may edit a message, and the author or a moderator delete
    // it: nobody else gets the controls (the server refuses them anyway, with
    // `forbidden`).
    const moderator = me.role === 'moderator' || me.role === 'admin';
    if (own || moderator) body.append(renderActions(id, own));
    li.append(renderAvatar(user), body);
    return li;
  }

  /** Follow-ups from the same sender shortly after read as one block. */
  function regroup(li) {
    if (!li || !li.classList.contains('message')) return;
    const meta = messageMeta.get(li);
    const prev = li.previousElementSibling;
    const prevMeta = prev ? messageMeta.get(prev) : undefined;
    const grouped =
      prevMeta !== undefined &&
      meta !== undefined &&
      prevMeta.userId === meta.userId &&
      meta.ts >= prevMeta.ts &&
      meta.ts - prevMeta.ts < GROUP_WINDOW_MS;
    li.classList.toggle('grouped', grouped);
  }

  /**
   * "Edit" (own messages) and "Delete" (own messages, and anyone's for a
   * moderator) under a message.
   */
  function renderActions(id, own) {
    const actions = document.createElement('div');
    actions.className = 'message-actions';
    if (own) {
      const edit = actionButton('Edit', 'Edit message', `text-${id}`);
      edit.classList.add('edit-button');
      edit.addEventListener('click', () => startEditing(edit.closest('li.message')));
      actions.append(edit);
    }
    const del = actionButton('Delete', 'Delete message', `text-${id}`);
    del.classList.add('delete-button');
    del.addEventListener('click', () => askDelete(del.closest('li.message')));
    actions.append(del);
    return actions;
  }

  function actionButton(text, label, describedBy) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'message-action';
    button.textContent = text;
    button.setAttribute('aria-label', label);
    if (describedBy) button.setAttribute('aria-describedby', describedBy);
    return button;
  }

  /**
   * Text of a message as sent or last edited, without the "(edited)" mark:
   * `.text` holds the text node first, then a space and the mark.
   */
  function messageText(li) {
    const first = li.querySelector('.text').firstChild;
    return first && first.nodeType === Node.TEXT_NODE ? first.data : '';
  }

  /** Shows `text` (when given) followed by "(edited)", the edit time in its tooltip. */
  function markEdited(li, text, ts) {
    if (li.classList.contains('deleted')) return;
    const p = li.querySelector('.text');
    if (typeof text === 'string') p.textContent = text;
    let mark = p.querySelector('.edited-mark');
    if (!mark) {
      mark = document.createElement('span');
      mark.className = 'edited-mark';
      mark.textContent = '(edited)';
      p.append(' ', mark);
    }
    if (Number.isFinite(ts)) mark.title = `Edited ${absoluteTime(ts)}`;
    li.classList.add('edited');
    li.classList.remove('saving');
  }

  /** "message deleted", greyed; the text and the controls go. A delete is final. */
  function markDeleted(li) {
    const hadFocus = li.contains(document.activeElement);
    if (editing === li) stopEditing(false);
    li.classList.add('deleted');
    li.classList.remove('edited', 'saving');
    li.querySelector('.text').textContent = DELETED_TEXT;
    for (const controls of li.querySelectorAll('.message-actions, .confirm-delete')) controls.remove();
    li.classList.remove('confirming');
    // The focused control is gone: keep keyboard users in the log.
    if (hadFocus) el.messages.focus();
  }

  function applyChange(li, change) {
    if (change.kind === 'delete') markDeleted(li);
    else markEdited(li, change.text, change.ts);
  }

  /** join/left: the frame's own sentence, e.g. "ann joined.", and nothing else. */
  function renderNotice(id, text, ts) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.dataset.id = String(id);
    li.textContent = text;
    li.title = absoluteTime(ts);
    return li;
  }

  function renderTime(ts) {
    const time = document.createElement('time');
    time.className = 'time';
    const date = new Date(ts);
    time.dateTime = date.toISOString();
    time.title = absoluteTime(ts);
    time.textContent = relativeTime(ts, Date.now());
    return time;
  }

  /**
   * An avatar: the user's colored circle with initials drawn over it. The
   * image is an <img> under a text span because a per-user background-image
   * would need an inline style, which the CSP forbids.
   */
  function renderAvatar(user) {
    const span = document.createElement('span');
    span.className = 'avatar';
    span.setAttribute('aria-hidden', 'true');
    if (user && user.image) {
      const img = document.createElement('img');
      img.className = 'avatar-img';
      img.alt = '';
      img.decoding = 'async';
      // A broken image falls back to the span's neutral background.
      img.addEventListener('error', () => img.remove(), { once: true });
      img.src = user.image;
      span.append(img);
    }
    const initialsSpan = document.createElement('span');
    initialsSpan.className = 'avatar-initials';
    initialsSpan.textContent = initials(user ? user.name : '');
    span.append(initialsSpan);
    return span;
  }

  const segmenter =
    typeof Intl !== 'undefined' && typeof Intl.Segmenter === 'function'
      ? new Intl.Segmenter(undefined, { granularity: 'grapheme' })
      : null;

  /** First visible character of a word; flags and joined emoji stay whole where the browser can tell. */
  function firstCharacter(word) {
    if (segmenter) {
      const first = segmenter.segment(word)[Symbol.iterator]().next();
      return first.done ? '' : first.value.segment;
    }
    return Array.from(word)[0] || '';
  }

  /** "ann lee" → "AL", "李 小龙" → "李小", "🙂" → "🙂"; at most two words. */
  function initials(name) {
    const words = name.trim().split(/\s+/).filter(Boolean).slice(0, 2);
    const result = words.map(firstCharacter).join('').toUpperCase();
    return result || '?';
  }

  // ---------------------------------------------------------------------------
  // Rendering: the log and scrolling

  /** Whether the reader was at the newest message at the last scroll. */
  let atBottom = true;

  function isNearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight <= STICKY_BOTTOM_PX;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
    el.newMessages.hidden = true;
  }

  /**
   * Appends one item, following it if the reader was at the bottom (or sent
   * it), and otherwise leaving their position alone and offering a jump.
   */
  function appendItem(li, { own }) {
    const follow = own || isNearBottom();
    placeItem(li);
    // Only a reader at the bottom loses the oldest items: one who scrolled
    // back keeps what they are reading.
    if (follow) {
      trimLog();
      scrollToBottom();
    } else if (historyLoaded) {
      el.newMessages.hidden = false;
    }
  }

  /**
   * Puts an item in the log at its place by id (at the end for live frames,
   * which arrive in id order) and registers it.
   */
  function placeItem(li) {
    const id = Number(li.dataset.id);
    let next = null;
    const last = el.list.lastElementChild;
    if (last && Number(last.dataset.id) > id) {
      next = el.list.firstElementChild;
      while (next && Number(next.dataset.id) < id) next = next.nextElementSibling;
    }
    el.list.insertBefore(li, next);
    items.set(id, li);
    regroup(li);
    regroup(li.nextElementSibling);
  }

  function trimLog() {
    const m = el.messages;
    const excess = el.list.children.length - MAX_RENDERED_ITEMS;
    if (excess <= 0) return;
    const before = m.scrollHeight;
    for (let i = 0; i < excess; i += 1) {
      const first = el.list.firstElementChild;
      items.delete(Number(first.dataset.id));
      first.remove();
    }
    // Keep what the reader is looking at in place.
    m.scrollTop -= before - m.scrollHeight;
    // A follow-up that lost the message it was grouped with needs its author back.
    const first = el.list.firstElementChild;
    if (first) first.classList.remove('grouped');
    // What was dropped can be paged back in.
    reachedBeginning = false;
    olderFailed = false;
    setHistoryState('idle');
  }

  function updateEmptyState() {
    const hasMessages = el.list.querySelector('li.message') !== null;
    el.emptyState.hidden = hasMessages || !historyLoaded;
    el.historyTop.hidden = !hasMessages && el.historyTop.dataset.state !== 'loading';
  }

  function refreshTimes() {
    const now = Date.now();
    for (const time of el.messages.querySelectorAll('time.time')) {
      const ts = Date.parse(time.dateTime);
      if (!Number.isNaN(ts)) time.textContent = relativeTime(ts, now);
    }
  }

  // ---------------------------------------------------------------------------
  // Scrollback

  const HISTORY_TEXT = {
    idle: '',
    loading: 'Loading earlier messages…',
    start: `This is the beginning of #${room}`,
    error: SCROLLBACK_FAILED_TEXT,
  };

  function setHistoryState(state) {
    el.historyTop.dataset.state = state;
    el.historyStatus.textContent = HISTORY_TEXT[state];
    el.historyRetry.hidden = state !== 'error';
    updateEmptyState();
  }

  /** Fetches the previous page once the reader is at (or the log does not reach) the top. */
  function maybeLoadOlder() {
    if (!historyLoaded || olderLoading || reachedBeginning || olderFailed) return;
    if (el.messages.scrollTop > LOAD_OLDER_PX) return;
    loadOlder();
  }

  /**
   * One page of the room's retained messages before the oldest item shown.
   * The replayed history is the newest stretch of the room with nothing left
   * out, so "before the oldest item" (a message or a join/left notice) is
   * exactly what is missing.
   */
  async function loadOlder() {
    olderLoading = true;
    olderFailed = false;
    setHistoryState('loading');
    const first = el.list.firstElementChild;
    const before = first ? Number(first.dataset.id) : 0;
    let url = `/api/rooms/${encodeURIComponent(room)}/messages?limit=${SCROLLBACK_PAGE}`;
    if (before > 0) url += `&before=${before}`;
    let page = null;
    try {
      const response = await fetch(url, {
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
        cache: 'no-store',
      });
      if (response.status === 401) {
        // The cookie is gone: as the socket does on 4001.
        stopped = true;
        location.assign('/signin');
        return;
      }
      if (!response.ok) throw new Error(`status ${response.status}`);
      page = await response.json();
    } catch {
      page = null;
    }
    olderLoading = false;
    if (!page || typeof page !== 'object' || !Array.isArray(page.messages)) {
      olderFailed = true;
      setHistoryState('error');
      return;
    }
    insertOlder(page.messages);
    reachedBeginning = page.more !== true;
    setHistoryState(reachedBeginning ? 'start' : 'idle');
    // Still at the top (a short page, a tall window): keep filling.
    maybeLoadOlder();
  }

  /**
   * Merges a scrollback page into the log by id, skipping anything already
   * shown, and keeps what the reader is looking at where it is on screen.
   */
  function insertOlder(frames) {
    const chats = [];
    for (const frame of frames) {
      if (!frame || typeof frame !== 'object' || frame.type !== 'chat') continue;
      if (!Number.isSafeInteger(frame.id) || items.has(frame.id)) continue;
      if (typeof frame.room === 'string' && frame.room !== room) continue;
      chats.push(frame);
    }
    if (chats.length === 0) return;
    chats.sort((a, b) => a.id - b.id);

    const anchor = firstVisibleItem();
    const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;

    let next = el.list.firstElementChild;
    for (const frame of chats) {
      while (next && Number(next.dataset.id) < frame.id) next = next.nextElementSibling;
      const li = renderChat(frame.id, normalizeUser(frame.user), frame);
      el.list.insertBefore(li, next);
      items.set(frame.id, li);
      const change = pendingChanges.get(frame.id);
      if (change) {
        pendingChanges.delete(frame.id);
        applyChange(li, change);
      }
    }
    // Grouping across the seams, then the new items' own.
    for (const frame of chats) {
      const li = items.get(frame.id);
      regroup(li);
      regroup(li.nextElementSibling);
    }
    if (anchor) el.messages.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
    updateEmptyState();
  }

  /** The first log item at least partly on screen. */
  function firstVisibleItem() {
    const top = el.messages.getBoundingClientRect().top;
    for (const li of el.list.children) {
      if (li.getBoundingClientRect().bottom > top) return li;
    }
    return el.list.firstElementChild;
  }

  // ---------------------------------------------------------------------------
  // Typing

  /**
   * Tells the room that the user is typing, at most once per TYPING_SEND_MS.
   * Typing inside that window is told when it ends (if the box still holds
   * text), so a quick burst right after a send is not lost.
   */
  function sendTyping() {
    clearTimeout(typingTimer);
    typingTimer = 0;
    if (el.input.value.trim() === '') return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const wait = typingSentAt + TYPING_SEND_MS - Date.now();
    if (wait > 0) {
      typingTimer = setTimeout(sendTyping, wait);
      return;
    }
    typingSentAt = Date.now();
    socket.send(JSON.stringify({ type: 'typing' }));
  }

  /** Someone else is typing: shown for TYPING_SHOW_MS after their latest `typing`. */
  function handleTyping(frame) {
    if (typeof frame.room === 'string' && frame.room !== room) return;
    const user = normalizeUser(frame.user);
    if (!user || user.id === me.id) return;
    const known = typists.get(user.id);
    if (known) clearTimeout(known.timer);
    const timer = setTimeout(() => stopTyping(user.id), TYPING_SHOW_MS);
    typists.set(user.id, { name: user.name || 'Someone', timer });
    renderTyping();
  }

  function stopTyping(userId) {
    const known = typists.get(userId);
    if (!known) return;
    clearTimeout(known.timer);
    typists.delete(userId);
    renderTyping();
  }

  /** "Ada is typing…", "Ada and Bob are typing…", "Several people are typing…". */
  function renderTyping() {
    const names = Array.from(typists.values(), (typist) => typist.name);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    el.typing.textContent = text;
  }

  // ---------------------------------------------------------------------------
  // Editing and deleting one's own messages

  /** Sends a JSON command on the open socket; false (and a notice) when there is none. */
  function sendCommand(command) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showNotice(NOT_CONNECTED_TEXT);
      return false;
    }
    socket.send(JSON.stringify(command));
    lastCommand = command.type;
    return true;
  }

  /**
   * Turns the message's text into a box holding it: Enter saves, Shift+Enter
   * is a newline, Escape cancels. The text shows the change once the server's
   * `edit` frame comes back, as every other page sees it.
   */
  function startEditing(li) {
    if (!li || li.classList.contains('deleted')) return;
    if (editing && editing !== li) stopEditing(false);
    if (editing === li) {
      editing.querySelector('.edit-input').focus();
      return;
    }
    cancelDelete(li, false);
    editing = li;
    li.classList.add('editing');
    const id = Number(li.dataset.id);
    const p = li.querySelector('.text');
    p.hidden = true;

    const form = document.createElement('form');
    form.className = 'edit-form';
    const input = document.createElement('textarea');
    input.className = 'edit-input message-input';
    input.rows = 1;
    input.value = messageText(li);
    input.setAttribute('aria-label', 'Edit message');
    const hint = document.createElement('p');
    hint.className = 'edit-hint';
    hint.id = `edit-hint-${id}`;
    hint.textContent = 'Enter to save · Escape to cancel';
    input.setAttribute('aria-describedby', hint.id);
    const save = actionButton('Save', 'Save edit');
    save.type = 'submit';
    save.classList.add('save-button');
    const cancel = actionButton('Cancel', 'Cancel edit');
    cancel.classList.add('cancel-button');
    const row = document.createElement('div');
    row.className = 'edit-row';
    row.append(hint, save, cancel);
    form.append(input, row);
    p.after(form);

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      saveEdit(li);
    });
    cancel.addEventListener('click', () => stopEditing(true));
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') {
        event.preventDefault();
        event.stopPropagation();
        stopEditing(true);
        return;
      }
      if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
      if (event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      saveEdit(li);
    });
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
    if (!autoSizes) {
      input.addEventListener('input', () => resizeBox(input));
      resizeBox(input);
    }
  }

  function saveEdit(li) {
    const input = li.querySelector('.edit-input');
    if (!input) return;
    const text = input.value.trim();
    if (text === '') {
      showNotice(EMPTY_EDIT_TEXT);
      return;
    }
    if (messageLength(text) > MAX_MESSAGE_CHARS) {
      showNotice(ERROR_TEXT.too_long);
      return;
    }
    if (text === messageText(li)) {
      stopEditing(true);
      return;
    }
    if (!sendCommand({ type: 'edit', id: Number(li.dataset.id), data: text })) return;
    clearNotice();
    li.classList.add('saving');
    stopEditing(true);
  }

  /** Leaves edit mode; `refocus` puts the focus back on the message's Edit button. */
  function stopEditing(refocus) {
    const li = editing;
    if (!li) return;
    editing = null;
    li.classList.remove('editing');
    const form = li.querySelector('.edit-form');
    const hadFocus = form !== null && form.contains(document.activeElement);
    if (form) form.remove();
    li.querySelector('.text').hidden = false;
    const edit = li.querySelector('.edit-button');
    if (edit && (refocus || hadFocus)) edit.focus();
  }

  /** Delete asks once, in place: "Delete this message?" with Delete and Cancel. */
  function askDelete(li) {
    if (!li || li.classList.contains('deleted')) return;
    if (editing === li) stopEditing(false);
    const actions = li.querySelector('.message-actions');
    if (!actions || li.querySelector('.confirm-delete')) return;
    li.classList.add('confirming');
    const confirm = document.createElement('div');
    confirm.className = 'confirm-delete';
    confirm.setAttribute('role', 'group');
    const question = document.createElement('span');
    question.className = 'confirm-question';
    question.id = `confirm-${li.dataset.id}`;
    question.textContent = 'Delete this message?';
    confirm.setAttribute('aria-labelledby', question.id);
    const yes = actionButton('Delete', 'Yes, delete message');
    yes.classList.add('confirm-button');
    const no = actionButton('Cancel', 'Cancel delete');
    no.classList.add('cancel-button');
    confirm.append(question, yes, no);
    actions.hidden = true;
    actions.after(confirm);
    yes.addEventListener('click', () => {
      if (!sendCommand({ type: 'delete', id: Number(li.dataset.id) })) return;
      clearNotice();
      li.classList.add('saving');
      cancelDelete(li, true);
    });
    no.addEventListener('click', () => cancelDelete(li, true));
    confirm.addEventListener('keydown', (event) => {
      if (event.key !== 'Escape') return;
      event.preventDefault();
      event.stopPropagation();
      cancelDelete(li, true);
    });
    no.focus();
  }

  function cancelDelete(li, refocus) {
    const confirm = li.querySelector('.confirm-delete');
    if (!confirm) return;
    confirm.remove();
    li.classList.remove('confirming');
    const actions = li.querySelector('.message-actions');
    if (!actions) return;
    actions.hidden = false;
    if (refocus) actions.querySelector('.delete-button').focus();
  }

  /** The user's newest message that can still be edited (for ↑ in an empty box). */
  function lastOwnMessage() {
    const own = el.list.querySelectorAll('li.message.own:not(.deleted)');
    return own.length > 0 ? own[own.length - 1] : null;
  }

  // ---------------------------------------------------------------------------
  // Time formatting

  const clockFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  const dayYearFormat = new Intl.DateTimeFormat(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
  });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });

  function absoluteTime(ts) {
    return fullFormat.format(new Date(ts));
  }

  /** "just now", "N min ago", a clock time for earlier today, a date for older days. */
  function relativeTime(ts, now) {
    const diff = now - ts;
    if (diff < 60 * 1000) return 'just now'; // Also absorbs small clock skew.
    if (diff < 60 * 60 * 1000) return `${Math.floor(diff / 60000)} min ago`;
    const date = new Date(ts);
    const today = new Date(now);
    if (date.toDateString() === today.toDateString()) return clockFormat.format(date);
    if (date.getFullYear() === today.getFullYear()) return dayFormat.format(date);
    return dayYearFormat.format(date);
  }

  // ---------------------------------------------------------------------------
  // Rendering: users, rooms, notices, title

  function renderUsers() {
    const sorted = Array.from(users.values()).sort(
      (a, b) =>
        a.name.localeCompare(b.name, undefined, { sensitivity: 'base' }) ||
        (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
    const items = sorted.map((user) => {
      const li = document.createElement('li');
      li.className = 'user';
      li.dataset.userId = user.id;
      const name = document.createElement('span');
      name.className = 'user-name';
      name.textContent = user.name;
      li.append(renderAvatar(user), name);
      if (user.id === me.id) {
        li.classList.add('own');
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = '(you)';
        li.append(' ', you);
      } else if (me.role === 'moderator' || me.role === 'admin') {
        li.append(renderRemove(user));
      }
      return li;
    });
    el.users.replaceChildren(...items);
    el.onlineCount.textContent = `${users.size} online`;
  }

  /**
   * A moderator's "Remove" beside another user: asks once ("Remove Ann for 10
   * minutes?"), then sends `kick` with a 10-minute ban; their sockets close on
   * every node and the list updates with their `left`.
   */
  function renderRemove(user) {
    const remove = actionButton('Remove', `Remove ${user.name} from the room`);
    remove.classList.add('remove-button');
    remove.addEventListener('click', () => {
      if (remove.dataset.confirming === 'yes') {
        if (sendCommand({ type: 'kick', user_id: user.id, ban_seconds: KICK_BAN_SECONDS })) {
          remove.disabled = true;
          remove.textContent = 'Removing…';
        }
        return;
      }
      remove.dataset.confirming = 'yes';
      remove.textContent = 'Remove for 10 min?';
      remove.setAttribute('aria-label', `Yes, remove ${user.name} for 10 minutes`);
    });
    remove.addEventListener('blur', () => {
      if (remove.disabled) return;
      delete remove.dataset.confirming;
      remove.textContent = 'Remove';
      remove.setAttribute('aria-label', `Remove ${user.name} from the room`);
    });
    return remove;
  }

  /** Recently visited rooms, newest first, without lobby (always listed first). */
  function loadRecentRooms() {
    try {
      const parsed = JSON.parse(localStorage.getItem(RECENT_ROOMS_KEY) || '[]');
      if (!Array.isArray(parsed)) return [];
      return parsed.filter((name) => typeof name === 'string' && ROOM_PATTERN.test(name) && name !== 'lobby');
    } catch {
      return []; // Storage disabled or corrupt: the switcher still shows lobby and this room.
    }
  }

  function rememberRoom() {
    const recent = loadRecentRooms().filter((name) => name !== room);
    if (room !== 'lobby') recent.unshift(room);
    const kept = recent.slice(0, MAX_RECENT_ROOMS);
    try {
      localStorage.setItem(RECENT_ROOMS_KEY, JSON.stringify(kept));
    } catch {
      // Private mode or quota: remembering rooms is a convenience only.
    }
    return kept;
  }

  function renderRooms(recent) {
    const names = ['lobby', ...recent.filter((name) => name !== 'lobby')];
    if (!names.includes(room)) names.splice(1, 0, room);
    const items = names.map((name) => {
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.className = 'room-link';
      a.href = roomPath(name);
      a.textContent = `#${name}`;
      if (name === room) a.setAttribute('aria-current', 'page');
      li.append(a);
      return li;
    });
    el.roomList.replaceChildren(...items);
  }

  function roomPath(name) {
    return name === 'lobby' ? '/' : `/rooms/${encodeURIComponent(name)}`;
  }

  function showNotice(text, { sticky = false } = {}) {
    clearTimeout(noticeTimer);
    el.noticeBar.textContent = text;
    if (!sticky) noticeTimer = setTimeout(clearNotice, NOTICE_TIMEOUT_MS);
  }

  function clearNotice() {
    clearTimeout(noticeTimer);
    if (!stopped) el.noticeBar.textContent = '';
  }

  function countUnread() {
    if (!document.hidden || !historyLoaded) return;
    unread += 1;
    document.title = `(${unread}) ${baseTitle}`;
  }

  function clearUnread() {
    unread = 0;
    document.title = baseTitle;
  }

  // ---------------------------------------------------------------------------
  // Composer

  /** Length as the server counts it: Unicode scalar values after trimming. */
  function messageLength(text) {
    return Array.from(text).length;
  }

  function sendMessage() {
    const text = el.input.value.trim();
    if (text === '') return;
    // In each refusal below the text stays in the box, so nothing typed is lost.
    if (messageLength(text) > MAX_MESSAGE_CHARS) {
      showNotice(ERROR_TEXT.too_long);
      return;
    }
    if (!sendCommand({ type: 'chat', data: text })) return;
    // The message is what they were typing: no late `typing` after it.
    clearTimeout(typingTimer);
    typingTimer = 0;
    unconfirmed.push(text);
    if (unconfirmed.length > MAX_UNCONFIRMED) unconfirmed.shift();
    el.input.value = '';
    onInputChange();
    clearNotice();
  }

  /**
   * Shows how many characters are left once the text nears the limit, and by
   * how much it is over past it (the box does not cut a paste short).
   */
  function updateCharCount() {
    const left = MAX_MESSAGE_CHARS - messageLength(el.input.value.trim());
    const near = left <= Math.max(20, Math.floor(MAX_MESSAGE_CHARS / 10));
    el.charCount.hidden = !near;
    el.charCount.classList.toggle('over', left < 0);
    if (!near) {
      el.charCount.textContent = '';
    } else if (left >= 0) {
      el.charCount.textContent = `${left} ${left === 1 ? 'character' : 'characters'} left`;
    } else {
      el.charCount.textContent = `${-left} ${left === -1 ? 'character' : 'characters'} over the limit`;
    }
  }

  function onInputChange() {
    resizeInput();
    updateCharCount();
  }

  function onInputKeydown(event) {
    // ↑ in an empty box edits the user's last message, as in most chat apps.
    if (event.key === 'ArrowUp' && el.input.value === '' && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
      const last = lastOwnMessage();
      if (last) {
        event.preventDefault();
        startEditing(last);
      }
      return;
    }
    // Enter sends; Shift+Enter is a newline. While an IME is composing, Enter
    // confirms the composition instead (keyCode 229 covers older Safari).
    if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    sendMessage();
  }

  const autoSizes = typeof CSS !== 'undefined' && CSS.supports('field-sizing', 'content');

  /**
   * Grows the one-line box with its text where CSS `field-sizing` is not
   * supported. Setting a CSSOM property is allowed under `style-src 'self'`
   * (only style attributes in markup are blocked); max-height lives in CSS.
   */
  function resizeInput() {
    if (autoSizes) return;
    resizeBox(el.input);
  }

  function resizeBox(input) {
    input.style.height = 'auto';
    // scrollHeight leaves out the borders, which border-box sizing counts.
    const borders = input.offsetHeight - input.clientHeight;
    input.style.height = `${input.scrollHeight + borders}px`;
  }

  // ---------------------------------------------------------------------------
  // Sidebar and room switcher

  function setSidebarOpen(open) {
    el.app.classList.toggle('sidebar-open', open);
    el.sidebarToggle.setAttribute('aria-expanded', String(open));
  }

  function onRoomSubmit(event) {
    event.preventDefault();
    const name = el.roomInput.value.trim().toLowerCase();
    if (!ROOM_PATTERN.test(name)) {
      el.roomInput.reportValidity();
      return;
    }
    location.assign(roomPath(name));
  }

  /** Room names are lowercase; fold what is typed instead of rejecting it. */
  function onRoomInput() {
    const input = el.roomInput;
    const lower = input.value.toLowerCase();
    if (lower === input.value) return;
    const { selectionStart, selectionEnd } = input;
    input.value = lower;
    input.setSelectionRange(selectionStart, selectionEnd);
  }

  // ---------------------------------------------------------------------------
  // Start-up

  function init() {
    renderRooms(rememberRoom());
    const whoami = document.querySelector('.whoami');
    if (whoami) whoami.prepend(renderAvatar(me));
    window.addEventListener('storage', (event) => {
      if (event.key === RECENT_ROOMS_KEY) renderRooms(loadRecentRooms());
    });

    el.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      sendMessage();
    });
    el.input.addEventListener('keydown', onInputKeydown);
    el.input.addEventListener('input', onInputChange);
    el.input.addEventListener('input', sendTyping);
    el.historyRetry.addEventListener('click', () => {
      olderFailed = false;
      loadOlder();
    });

    el.roomForm.addEventListener('submit', onRoomSubmit);
    el.roomInput.addEventListener('input', onRoomInput);

    el.sidebarToggle.addEventListener('click', () => {
      setSidebarOpen(!el.app.classList.contains('sidebar-open'));
    });
    // On a phone the panel covers the top of the conversation: a tap on the
    // conversation puts it away.
    document.querySelector('.chat').addEventListener('click', () => {
      if (el.app.classList.contains('sidebar-open')) setSidebarOpen(false);
    });
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && el.app.classList.contains('sidebar-open')) {
        setSidebarOpen(false);
        el.sidebarToggle.focus();
      }
    });

    el.messages.addEventListener('scroll', () => {
      atBottom = isNearBottom();
      if (atBottom) el.newMessages.hidden = true;
      maybeLoadOlder();
    }, { passive: true });
    // The log shrinks when a notice shows or the message box grows: a reader
    // who was at the newest message stays there.
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(() => {
        if (atBottom) el.messages.scrollTop = el.messages.scrollHeight;
      }).observe(el.messages);
    }
    el.newMessages.addEventListener('click', () => {
      scrollToBottom();
      el.input.focus();
    });
    el.reconnectNow.addEventListener('click', retryNow);

    window.addEventListener('online', reconnectNow);
    window.addEventListener('offline', () => {
      // Between attempts: stop counting down and wait for `online` instead.
      // An open socket is left alone; it notices on its own if it is dead.
      if (!socket) scheduleReconnect();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) return;
      clearUnread();
      refreshTimes();
      reconnectNow();
    });

    setInterval(refreshTimes, TIME_REFRESH_MS);

    // On a phone the on-screen keyboard would cover the conversation, so only
    // take focus where there is a real pointer (and so, usually, a keyboard).
    if (window.matchMedia('(pointer: fine)').matches) el.input.focus();

    connect();
  }

  init();
})();
