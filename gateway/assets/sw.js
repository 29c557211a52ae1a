// stile service worker: keeps the e-ticket page usable offline.
// Network first for the ticket page, /static/ assets and QR images, with the cache as the
// fallback (refreshed on every good response). Never touches /events (SSE) or non-GET.
'use strict';

var CACHE = 'stile-v1';
var CACHE_PREFIX = 'stile-';
var STATIC_ASSETS = ['/static/ticket.js', '/static/ticket.css', '/favicon.svg'];
// After this long without an answer, a cached copy is served (the fetch goes on and still
// refreshes the cache). Gates often have a signal that connects but carries nothing.
var NETWORK_TIMEOUT_MS = 4000;
// Longest ticket code accepted in a message; real codes are 32 or 34 symbols.
var CODE_MAX_LEN = 64;
var TICKET_PAGE = /^\/t\/[^/]+$/;
var QR_IMAGE = /^\/v1\/tickets\/[^/]+\/qr\.svg$/;

self.addEventListener('install', function (event) {
  self.skipWaiting();
  event.waitUntil(
    caches.open(CACHE).then(function (cache) {
      // One by one, so that a failing asset does not fail the install.
      return Promise.all(STATIC_ASSETS.map(function (url) {
        return cache.add(url).catch(function () {});
      }));
    })
  );
});

self.addEventListener('activate', function (event) {
  event.waitUntil(
    caches.keys().then(function (names) {
      return Promise.all(names.filter(function (name) {
        return name.indexOf(CACHE_PREFIX) === 0 && name !== CACHE;
      }).map(function (name) {
        return caches.delete(name);
      }));
    }).then(function () {
      return self.clients.claim();
    })
  );
});

// The page tells us its code once we control it: keep its page and QR image for offline use.
// With `refresh` (its state just changed, say by a staff check-in) the page is fetched again.
self.addEventListener('message', function (event) {
  var msg = event.data;
  if (!msg || msg.type !== 'stile:cache-ticket' || typeof msg.code !== 'string') return;
  if (msg.code.length === 0 || msg.code.length > CODE_MAX_LEN) return;
  var code = encodeURIComponent(msg.code);
  var page = '/t/' + code;
  var urls = [page, '/v1/tickets/' + code + '/qr.svg'].concat(STATIC_ASSETS);
  event.waitUntil(
    caches.open(CACHE).then(function (cache) {
      return Promise.all(urls.map(function (url) {
        if (msg.refresh === true && url === page) return cache.add(url).catch(function () {});
        return cache.match(url).then(function (hit) {
          return hit || cache.add(url);
        }).catch(function () {});
      }));
    })
  );
});

self.addEventListener('fetch', function (event) {
  var req = event.request;
  if (req.method !== 'GET') return;
  var url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  var path = url.pathname;
  if (/\/events$/.test(path)) return;
  if ((req.headers.get('Accept') || '').indexOf('text/event-stream') !== -1) return;
  var page = TICKET_PAGE.test(path);
  if (!page && path.indexOf('/static/') !== 0 && path !== '/favicon.svg' && !QR_IMAGE.test(path)) return;
  // One cache entry per path: a rotating QR's ?step=N only busts the HTTP cache.
  var key = url.origin + path + (page || QR_IMAGE.test(path) ? '' : url.search);
  event.respondWith(networkFirst(event, req, key, page));
});

function networkFirst(event, req, key, page) {
  return caches.open(CACHE).then(function (cache) {
    var fromCache = function () {
      return cache.match(key).then(function (hit) {
        return hit ? (page ? markCached(hit) : hit) : null;
      });
    };
    var network = fetch(req).then(function (res) {
      if (res.ok && !res.redirected && res.type === 'basic') {
        return cache.put(key, res.clone()).then(function () {
          return res;
        }, function () {
          return res;
        });
      }
      // A server error (e.g. the node is unreachable): a saved copy is more useful.
      if (res.status >= 500) {
        return fromCache().then(function (hit) {
          return hit || res;
        });
      }
      return res;
    });
    event.waitUntil(network.catch(function () {}));
    var slow = new Promise(function (resolve) {
      setTimeout(resolve, NETWORK_TIMEOUT_MS);
    }).then(fromCache).then(function (hit) {
      return hit || network;
    });
    return Promise.race([network, slow]).catch(function () {
      return fromCache().then(function (hit) {
        return hit || offlineResponse(page);
      });
    });
  });
}

// A page served from the cache says so, so that the script trusts a remembered voided state.
function markCached(res) {
  return res.text().then(function (html) {
    var headers = new Headers(res.headers);
    headers.delete('Content-Length');
    headers.delete('Content-Encoding');
    return new Response(html.replace('data-source="network"', 'data-source="cache"'), {
      status: res.status,
      statusText: res.statusText,
      headers: headers
    });
  });
}

function offlineResponse(page) {
  if (page) {
    return new Response(
      '<!doctype html><html lang="en"><head><meta charset="utf-8">' +
        '<meta name="viewport" content="width=device-width, initial-scale=1">' +
        '<title>Offline</title></head><body><main><h1>Offline</h1>' +
        '<p>This ticket is not saved on this device yet. Connect to the internet and ' +
        'reload the page.</p></main></body></html>',
      { status: 503, headers: { 'Content-Type': 'text/html; charset=utf-8' } }
    );
  }
  return new Response('Offline, and no saved copy on this device.', {
    status: 503,
    headers: { 'Content-Type': 'text/plain; charset=utf-8' }
  });
}
