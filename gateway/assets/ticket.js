// stile e-ticket page: live state over server-sent events, offline memory, rotating QR.
// Plain JS, no libraries, no build step. Data comes from the JSON block #ticket-data.
(function () {
  'use strict';

  var LABELS = {
    valid: 'Valid',
    used: 'Used \u2014 voided',
    revoked: 'Revoked \u2014 voided',
    transferred: 'Transferred',
    expired: 'Expired'
  };
  // Slack after a server-second boundary before the countdown ticks, so it lands past it.
  var TICK_SLACK_MS = 25;
  // A live event's server_time further than this from our estimate resets the clock offset.
  var OFFSET_RESYNC_MS = 2000;

  var dataEl = document.getElementById('ticket-data');
  var main = document.getElementById('ticket');
  if (!dataEl || !main) return;
  var data = JSON.parse(dataEl.textContent);
  // What the URLs name: a static ticket's code, or a rotating ticket's page token.
  var code = String(data.code);
  var codeUrl = encodeURIComponent(code);
  var storeKey = 'stile:ticket:' + code;
  var fromCache = main.getAttribute('data-source') === 'cache';
  // Server clock minus device clock. A page served from the cache carries an old server
  // time, so it trusts the device clock until a live event says otherwise.
  var offsetMs = fromCache ? 0 : data.server_unix_ms - Date.now();

  var stateEl = document.getElementById('state');
  var detailEl = document.getElementById('state-detail');
  var imgEl = document.getElementById('qr-img');
  var rotateEl = document.getElementById('rotate');
  var countdownEl = document.getElementById('rotate-countdown');
  var liveEl = document.getElementById('live');

  var qrBase = '/v1/tickets/' + codeUrl + '/qr.svg';
  var rotating = data.rotating === true && data.step_s > 0;
  var stepMs = rotating ? data.step_s * 1000 : 0;
  var shownStep = rotating ? Math.floor(data.server_unix_ms / stepMs) : 0;
  var tickTimer = 0;
  var current;

  function serverNow() {
    return Date.now() + offsetMs;
  }

  function isVoided(state) {
    return state === 'used' || state === 'revoked' || state === 'transferred';
  }

  function pad2(n) {
    return (n < 10 ? '0' : '') + n;
  }

  // "18:42:10" in the device's time zone; an unparsable value is shown as it is.
  function clockTime(text) {
    var ms = Date.parse(text);
    if (isNaN(ms)) return String(text);
    var t = new Date(ms);
    return pad2(t.getHours()) + ':' + pad2(t.getMinutes()) + ':' + pad2(t.getSeconds());
  }

  function detailText(e) {
    if (e.transferred) return 'Passed on to a new holder: this code opens no gate';
    if (e.state !== 'used') return '';
    var parts = [];
    if (e.used_at) parts.push('at ' + clockTime(e.used_at));
    if (e.gate !== null) parts.push('at gate ' + e.gate);
    return parts.length ? 'Used ' + parts.join(' ') : '';
  }

  // The stored form: {state, used_at, gate, transferred, seen_ms}, seen_ms in server time.
  function entry(src, seenMs) {
    return {
      state: String(src.state),
      used_at: src.used_at ? String(src.used_at) : null,
      gate: typeof src.gate === 'number' ? src.gate : null,
      transferred: src.transferred === true,
      seen_ms: seenMs
    };
  }

  function loadStored() {
    try {
      var e = JSON.parse(window.localStorage.getItem(storeKey));
      if (e && typeof e.state === 'string' && typeof e.seen_ms === 'number') {
        return entry(e, e.seen_ms);
      }
    } catch (_) {
      // No storage (private mode, disabled): the page still works, without memory.
    }
    return null;
  }

  function store(e) {
    try {
      window.localStorage.setItem(storeKey, JSON.stringify(e));
    } catch (_) {
      // Storage full or disabled: nothing to do.
    }
  }

  function render(e) {
    var voided = isVoided(e.state);
    stateEl.setAttribute('data-state', e.state);
    stateEl.textContent = LABELS[e.state] || 'Unknown';
    detailEl.textContent = detailText(e);
    main.setAttribute('data-voided', voided ? 'true' : 'false');
    if (rotateEl) rotateEl.hidden = !rotating || voided;
  }

  function show(e) {
    current = e;
    store(e);
    render(e);
  }

  // The rendered state against the remembered one: the newer by server time wins (a tie
  // goes to the remembered one, which was learned later). A page from the cache never
  // brings a voided ticket back to life.
  function initialState() {
    var rendered = entry(data, data.server_unix_ms);
    var stored = loadStored();
    if (!stored) return rendered;
    if (stored.seen_ms >= rendered.seen_ms) return stored;
    if (fromCache && isVoided(stored.state)) return stored;
    return rendered;
  }

  function onTicket(ev) {
    var j;
    try {
      j = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    if (!j || typeof j.state !== 'string') return;
    var serverMs = Date.parse(j.server_time);
    if (!isNaN(serverMs) && Math.abs(serverMs - serverNow()) > OFFSET_RESYNC_MS) {
      offsetMs = serverMs - Date.now();
      if (rotating) tick();
    }
    // A live event happened after everything known so far, even if its server_time is
    // coarser than the render time.
    var seen = Math.max(isNaN(serverMs) ? serverNow() : serverMs, current.seen_ms);
    show(entry(j, seen));
  }

  function connectLive() {
    if (!window.EventSource) return;
    var es = new EventSource('/t/' + codeUrl + '/events');
    es.addEventListener('ticket', onTicket);
    es.addEventListener('open', function () {
      liveEl.textContent = '';
    });
    es.addEventListener('error', function () {
      // EventSource reconnects by itself; say that what is shown may be old meanwhile.
      liveEl.textContent = 'Offline: showing the last known state. Reconnecting\u2026';
    });
  }

  // Rotating codes: follow the server's time steps; tick on every server second.
  function tick() {
    clearTimeout(tickTimer);
    var now = serverNow();
    var step = Math.floor(now / stepMs);
    if (step !== shownStep && !isVoided(current.state)) {
      shownStep = step;
      imgEl.src = qrBase + '?step=' + step;
    }
    var leftS = Math.ceil(((step + 1) * stepMs - now) / 1000);
    countdownEl.textContent = 'new code in ' + leftS + ' s';
    tickTimer = setTimeout(tick, 1000 - (((now % 1000) + 1000) % 1000) + TICK_SLACK_MS);
  }

  function startRotation() {
    if (!rotating || !imgEl || !countdownEl) return;
    tick();
    // Background tabs throttle timers; catch up as soon as the page is seen again.
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) tick();
    });
  }

  // Another tab of the same ticket learned something newer.
  function onStorage(ev) {
    if (ev.key !== storeKey) return;
    var e = loadStored();
    if (e && e.seen_ms >= current.seen_ms) {
      current = e;
      render(e);
    }
  }

  function registerWorker() {
    if (!('serviceWorker' in navigator)) return;
    navigator.serviceWorker
      .register('/sw.js', { scope: '/' })
      .then(function () {
        return navigator.serviceWorker.ready;
      })
      .then(function (reg) {
        if (reg.active) reg.active.postMessage({ type: 'stile:cache-ticket', code: code });
      })
      .catch(function () {
        // No offline copy (e.g. not a secure context); the live page still works.
      });
  }

  show(initialState());
  window.addEventListener('storage', onStorage);
  startRotation();
  connectLive();
  registerWorker();
})();
