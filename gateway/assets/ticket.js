// stile e-ticket page: live state over server-sent events, offline memory, rotating QR,
// times in the holder's own time zone, and staff check-in with a gate's PIN.
// Plain JS, no libraries, no build step. Data comes from the JSON block #ticket-data.
(function () {
  'use strict';

  var LABELS = {
    valid: 'Valid',
    used: 'Used \u2014 voided',
    revoked: 'Revoked \u2014 voided',
    transferred: 'Transferred',
    expired: 'Expired',
    void: 'Void \u2014 no longer held'
  };
  var DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  var MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  // Why a staff check-in was refused, in words; other outcomes show the node's message.
  var REFUSALS = {
    already_used: 'Already used',
    not_yet_valid: 'Not valid yet',
    expired: 'Expired',
    revoked: 'Revoked',
    transferred: 'Transferred',
    forged: 'Not a valid ticket',
    unknown: 'Unknown ticket',
    wrong_provider: 'Ticket of another organiser',
    rate_limited: 'Too many attempts'
  };
  // Slack after a server-second boundary before the countdown ticks, so it lands past it.
  var TICK_SLACK_MS = 25;
  // A live event's server_time further than this from our estimate resets the clock offset.
  var OFFSET_RESYNC_MS = 2000;
  // Random bytes naming one staff confirmation: a resend of it is answered as the first.
  var CONFIRMATION_BYTES = 16;

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
    return state === 'used' || state === 'revoked' || state === 'transferred' || state === 'void';
  }

  function pad2(n) {
    return (n < 10 ? '0' : '') + n;
  }

  // "Tue 1 Dec 2026, 19:42" (or with seconds) in the device's time zone; null if unparsable.
  function localText(iso, seconds) {
    var ms = Date.parse(iso);
    if (isNaN(ms)) return null;
    var t = new Date(ms);
    var text = DAYS[t.getDay()] + ' ' + t.getDate() + ' ' + MONTHS[t.getMonth()] + ' ' +
      t.getFullYear() + ', ' + pad2(t.getHours()) + ':' + pad2(t.getMinutes());
    return seconds ? text + ':' + pad2(t.getSeconds()) : text;
  }

  // A <time> showing `iso` in local time; the instant stays in `datetime` and `title`.
  function timeElement(iso, seconds) {
    var el = document.createElement('time');
    el.setAttribute('datetime', iso);
    el.setAttribute('title', iso);
    el.setAttribute('data-local', seconds ? 'seconds' : 'minutes');
    el.textContent = localText(iso, seconds) || String(iso);
    return el;
  }

  // Redraws every server-rendered time (UTC) in the holder's time zone.
  function localizeTimes() {
    var all = document.querySelectorAll('time[data-local]');
    for (var i = 0; i < all.length; i++) {
      var text = localText(all[i].getAttribute('datetime'), all[i].getAttribute('data-local') === 'seconds');
      if (text) all[i].textContent = text;
    }
  }

  // "gate 3 (North)", or "gate 3" for a gate without a name.
  function gateText(gate, name) {
    return 'gate ' + gate + (name ? ' (' + name + ')' : '');
  }

  // Fills `el` with parts: strings become text, {at} a local time with seconds.
  function fill(el, parts) {
    while (el.firstChild) el.removeChild(el.firstChild);
    for (var i = 0; i < parts.length; i++) {
      var p = parts[i];
      el.appendChild(typeof p === 'string' ? document.createTextNode(p) : timeElement(p.at, true));
    }
  }

  // "Used <time> at gate 3 (North)"; the same words as the server's page.
  function detailParts(e) {
    if (e.transferred || e.state === 'transferred') {
      return ['Passed on to a new holder: this code opens no gate'];
    }
    if (e.state !== 'used') return [];
    var gate = e.gate !== null ? gateText(e.gate, e.gate_name) : null;
    if (e.used_at) return gate ? ['Used ', { at: e.used_at }, ' at ' + gate] : ['Used ', { at: e.used_at }];
    return gate ? ['Used at ' + gate] : [];
  }

  // The stored form: {state, used_at, gate, gate_name, transferred, seen_ms}, seen_ms in
  // server time.
  function entry(src, seenMs) {
    return {
      state: String(src.state),
      used_at: src.used_at ? String(src.used_at) : null,
      gate: typeof src.gate === 'number' ? src.gate : null,
      gate_name: typeof src.gate_name === 'string' ? src.gate_name : null,
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
    fill(detailEl, detailParts(e));
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

  // A ticket view (the stream's, or a staff check-in's) learned now.
  function learn(j) {
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

  function onTicket(ev) {
    var j;
    try {
      j = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    learn(j);
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

  // Asks the service worker to keep this page (again, with `refresh`, after a change).
  function cacheTicket(refresh) {
    if (!('serviceWorker' in navigator) || !navigator.serviceWorker.controller) return;
    navigator.serviceWorker.controller.postMessage({
      type: 'stile:cache-ticket', code: code, refresh: refresh === true
    });
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

  // Staff check-in: gate number and PIN, a confirmation, then the node's answer.
  function startStaff() {
    var openEl = document.getElementById('staff-open');
    var formEl = document.getElementById('staff-form');
    var gateEl = document.getElementById('staff-gate');
    var pinEl = document.getElementById('staff-pin');
    var confirmEl = document.getElementById('staff-confirm');
    var confirmTextEl = document.getElementById('staff-confirm-text');
    var yesEl = document.getElementById('staff-confirm-yes');
    var cancelEl = document.getElementById('staff-cancel');
    var resultEl = document.getElementById('staff-result');
    var wordEl = document.getElementById('staff-result-word');
    var resultDetailEl = document.getElementById('staff-result-detail');
    if (!openEl || !formEl || !resultEl) return;
    // The confirmation being sent: kept until answered, so "try again" resends the same one.
    var pending = null;
    var sending = false;

    function result(outcome, word, parts) {
      resultEl.hidden = false;
      resultEl.setAttribute('data-outcome', outcome);
      wordEl.textContent = word;
      fill(resultDetailEl, parts);
      resultEl.scrollIntoView({ block: 'nearest' });
    }

    function confirmationId() {
      var bytes = new Uint8Array(CONFIRMATION_BYTES);
      window.crypto.getRandomValues(bytes);
      var hex = '';
      for (var i = 0; i < bytes.length; i++) hex += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
      return hex;
    }

    function cannotConfirm() {
      result('offline', 'Cannot confirm', [
        'No network: nobody can check the gate\u2019s PIN, so this ticket was not checked in. ' +
        'Use a scanner, or try again once the phone is online.'
      ]);
      yesEl.textContent = 'Try again';
    }

    // The node's answer: admitted, or refused saying when and where.
    function answered(a) {
      pending = null;
      confirmEl.hidden = true;
      pinEl.value = '';
      if (a.ticket) learn(a.ticket);
      cacheTicket(true);
      var where = gateText(a.gate, a.gate_name);
      if (a.admit) {
        result('admitted', 'Admitted', a.at ? ['Checked in at ' + where + ', ', { at: a.at }] : ['Checked in at ' + where]);
        return;
      }
      var parts = [(REFUSALS[a.outcome] || 'Refused') + ': '];
      if (a.outcome === 'already_used') {
        parts[0] = 'Already used ';
        if (a.at) parts.push({ at: a.at });
        if (a.outcome_gate) parts.push(' at ' + gateText(a.outcome_gate, a.outcome_gate_name));
      } else {
        parts.push(String(a.message || a.outcome));
      }
      result('refused', 'Refused', parts);
    }

    function problem(status, p) {
      var detail = p && typeof p.detail === 'string' ? p.detail : 'HTTP ' + status;
      if (status === 403) {
        pending = null;
        pinEl.value = '';
        result('wrong_pin', 'Wrong PIN', [detail]);
      } else if (status === 429) {
        pending = null;
        result('locked', 'Locked', [detail]);
      } else {
        // Not answered (the node or gateway failed): the same confirmation may be resent.
        result('error', 'Cannot confirm', [detail]);
        yesEl.textContent = 'Try again';
      }
    }

    function send() {
      if (sending || !pending) return;
      if (navigator.onLine === false) {
        cannotConfirm();
        return;
      }
      sending = true;
      fetch('/t/' + codeUrl + '/checkin', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(pending),
        cache: 'no-store'
      }).then(function (res) {
        return res.json().then(function (body) {
          if (res.ok) answered(body);
          else problem(res.status, body);
        }, function () {
          problem(res.status, null);
        });
      }, cannotConfirm).then(function () {
        sending = false;
      });
    }

    openEl.addEventListener('click', function () {
      formEl.hidden = !formEl.hidden;
      openEl.setAttribute('aria-expanded', formEl.hidden ? 'false' : 'true');
      if (!formEl.hidden) gateEl.focus();
    });

    formEl.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var gate = gateEl.value.trim();
      var pin = pinEl.value.trim();
      if (!/^[0-9]{1,5}$/.test(gate) || +gate < 1 || +gate > 65535) {
        result('error', 'Check the gate', ['The gate number is a number from 1 to 65535.']);
        return;
      }
      if (!/^[0-9]{1,16}$/.test(pin)) {
        result('error', 'Check the PIN', ['The gate\u2019s PIN is made of digits.']);
        return;
      }
      pending = { gate: +gate, pin: pin, confirmation: confirmationId() };
      resultEl.hidden = true;
      yesEl.textContent = 'Confirm check-in';
      confirmTextEl.textContent = 'Check this ticket in at gate ' + gate + '? It is voided at once.';
      confirmEl.hidden = false;
      yesEl.focus();
    });

    yesEl.addEventListener('click', send);
    cancelEl.addEventListener('click', function () {
      pending = null;
      confirmEl.hidden = true;
    });
  }

  localizeTimes();
  show(initialState());
  window.addEventListener('storage', onStorage);
  startRotation();
  startStaff();
  connectLive();
  registerWorker();
})();
