#!/usr/bin/env node
// h2_reset.js URL AUTHORITY N WAIT_MS: open N streams GET URL (with :authority AUTHORITY) on
// one HTTP/2 connection (prior knowledge), wait WAIT_MS, reset every stream still open with
// RST_STREAM(CANCEL), then close the connection. Prints "responses R resets S": R streams got
// a response head before the resets. Node's own http2 module (nghttp2) frames everything.
'use strict';
const http2 = require('http2');

const [url, authority, nStr, waitStr] = process.argv.slice(2);
const n = parseInt(nStr, 10);
const u = new URL(url);
const client = http2.connect(u.origin);
client.on('error', () => {});
let responses = 0;
const reqs = [];
for (let i = 0; i < n; i++) {
  const req = client.request({ ':path': u.pathname, ':authority': authority });
  req.on('response', () => { responses++; });
  req.on('error', () => {});
  req.resume();
  reqs.push(req);
}
setTimeout(() => {
  let resets = 0;
  for (const req of reqs) {
    if (!req.closed) {
      req.close(http2.constants.NGHTTP2_CANCEL);
      resets++;
    }
  }
  // let the RST_STREAM frames leave before the connection goes
  setTimeout(() => {
    console.log(`responses ${responses} resets ${resets}`);
    client.close();
  }, 300);
}, parseInt(waitStr, 10));
