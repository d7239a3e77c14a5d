#!/usr/bin/env node
// Mints Kubernetes-style projected service-account tokens for the CA's tests,
// with nothing but Node's built-in crypto (no npm packages).
//
//   mint-token.js keys DIR            RSA-2048 and EC P-256 signing keys, an
//                                     extra RSA key the JWKS does not hold, and
//                                     DIR/jwks.json (kids "rsa-1", "ec-1"),
//                                     as the API server's /openid/v1/jwks
//   mint-token.js token DIR [OPTS]    print one token (no newline)
//   mint-token.js vectors DIR         keys + fixed-time tokens for the unit
//                                     tests: DIR/cases/<name>.jwt and
//                                     DIR/cases.txt ("<name> <reason>")
//
// token options:
//   --alg A          RS256 (default), ES256, none, HS256 (HMAC keyed with the
//                    RSA public key PEM: the classic key-confusion attack), or
//                    any other name (signed RS256, header says A)
//   --key K          rsa | ec | other (default: rsa for RS*, ec for ES*)
//   --kid K          header kid (default: the key's); --no-kid leaves it out
//   --ns NS --sa SA  kubernetes.io namespace / service account (shop / web)
//   --pod NAME       kubernetes.io.pod.name (default web-0)
//   --aud A          an audience (repeatable; default remora-ca); --aud-string
//                    writes a single aud as a string; --no-aud leaves it out
//   --now T          "now" in epoch seconds (default: the clock)
//   --exp-in S       exp = now + S (default 3600); --no-exp leaves it out
//   --nbf-in S       nbf = now + S (default: no nbf); --iat-in S (default 0)
//   --no-k8s         leave out the kubernetes.io claim
//   --claims JSON    merged over the payload; --header JSON merged over the header
//   --bad-sig        flip one bit of the signature
//   --payload-raw S  use S (raw text, base64url-encoded as is) as the payload
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const b64u = (buf) => Buffer.from(buf).toString('base64url');

function writeKey(file, key) {
    fs.writeFileSync(file, key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
}

function keys(dir) {
    fs.mkdirSync(dir, { recursive: true });
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeKey(path.join(dir, 'rsa.pem'), rsa.privateKey);
    writeKey(path.join(dir, 'other.pem'), other.privateKey);
    writeKey(path.join(dir, 'ec.pem'), ec.privateKey);
    const rj = rsa.publicKey.export({ format: 'jwk' });
    const ej = ec.publicKey.export({ format: 'jwk' });
    // the API server's shape: use, kty, kid, alg, then the key
    const jwks = {
        keys: [
            { use: 'sig', kty: 'RSA', kid: 'rsa-1', alg: 'RS256', n: rj.n, e: rj.e },
            { use: 'sig', kty: 'EC', kid: 'ec-1', alg: 'ES256', crv: 'P-256', x: ej.x, y: ej.y },
        ],
    };
    fs.writeFileSync(path.join(dir, 'jwks.json'), JSON.stringify(jwks, null, 2) + '\n');
}

function loadKey(dir, name) {
    return crypto.createPrivateKey(fs.readFileSync(path.join(dir, name + '.pem')));
}

function parseArgs(argv) {
    const o = { aud: [], flags: new Set() };
    const single = new Set(['--aud-string', '--no-aud', '--no-exp', '--no-k8s', '--no-kid', '--bad-sig']);
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (single.has(a)) {
            o.flags.add(a);
            continue;
        }
        if (!a.startsWith('--') || i + 1 >= argv.length) throw new Error(`bad option ${a}`);
        const v = argv[++i];
        if (a === '--aud') o.aud.push(v);
        else o[a.slice(2)] = v;
    }
    return o;
}

// opts: the parsed options; returns the compact token.
function mint(dir, opts) {
    const now = opts.now !== undefined ? Number(opts.now) : Math.floor(Date.now() / 1000);
    const alg = opts.alg || 'RS256';
    const keyName = opts.key || (alg.startsWith('ES') ? 'ec' : 'rsa');
    const kids = { rsa: 'rsa-1', ec: 'ec-1', other: 'other-1' };
    const header = { alg };
    if (!opts.flags.has('--no-kid')) header.kid = opts.kid || kids[keyName];
    if (opts.header) Object.assign(header, JSON.parse(opts.header));
    const ns = opts.ns || 'shop', sa = opts.sa || 'web', pod = opts.pod || 'web-0';
    const payload = {
        iss: 'https://kubernetes.default.svc.cluster.local',
        sub: `system:serviceaccount:${ns}:${sa}`,
    };
    if (!opts.flags.has('--no-aud')) {
        const aud = opts.aud.length ? opts.aud : ['remora-ca'];
        payload.aud = opts.flags.has('--aud-string') ? aud[0] : aud;
    }
    if (!opts.flags.has('--no-exp')) payload.exp = now + Number(opts['exp-in'] || 3600);
    payload.iat = now + Number(opts['iat-in'] || 0);
    if (opts['nbf-in'] !== undefined) payload.nbf = now + Number(opts['nbf-in']);
    if (!opts.flags.has('--no-k8s'))
        payload['kubernetes.io'] = {
            namespace: ns,
            pod: { name: pod, uid: '6f1c0a4e-1b7d-4c55-9a39-2f5e4c1d8b01' },
            serviceaccount: { name: sa, uid: '0d3b8c7a-5e2f-4a61-8f0c-9b7e6d5c4a32' },
        };
    if (opts.claims) Object.assign(payload, JSON.parse(opts.claims));
    const body = opts['payload-raw'] !== undefined ? b64u(opts['payload-raw']) : b64u(JSON.stringify(payload));
    const input = b64u(JSON.stringify(header)) + '.' + body;
    let sig;
    if (alg === 'none') {
        sig = Buffer.alloc(0);
    } else if (alg.startsWith('HS')) {
        const pub = crypto.createPublicKey(loadKey(dir, 'rsa')).export({ type: 'spki', format: 'pem' });
        sig = crypto.createHmac('sha256', pub).update(input).digest();
    } else if (keyName === 'ec') {
        sig = crypto.sign('sha256', Buffer.from(input), { key: loadKey(dir, 'ec'), dsaEncoding: 'ieee-p1363' });
    } else {
        sig = crypto.sign('sha256', Buffer.from(input), loadKey(dir, keyName));
    }
    if (opts.flags.has('--bad-sig') && sig.length) sig[sig.length >> 1] ^= 0x01;
    return input + '.' + b64u(sig);
}

// Fixed-time tokens for test/unit/injector/test_token.c: "now" is NOW + 600.
const NOW = 1700000000;
const VECTORS = [
    ['ok-rs256', 'ok', []],
    ['ok-es256', 'ok', ['--alg', 'ES256']],
    ['ok-aud-string', 'ok', ['--aud-string']],
    ['ok-aud-many', 'ok', ['--aud', 'https://kubernetes.default.svc', '--aud', 'remora-ca']],
    ['ok-skew-exp', 'ok', ['--exp-in', '560']],
    ['ok-skew-nbf', 'ok', ['--nbf-in', '650']],
    ['ok-no-pod', 'ok', ['--claims', '{"kubernetes.io":{"namespace":"shop","serviceaccount":{"name":"web"}}}']],
    ['ok-other-ns', 'ok', ['--ns', 'payments', '--sa', 'ledger']],
    ['alg-none', 'algorithm', ['--alg', 'none']],
    ['alg-hs256', 'algorithm', ['--alg', 'HS256']],
    ['alg-ps256', 'algorithm', ['--alg', 'PS256']],
    ['alg-rs384', 'algorithm', ['--alg', 'RS384']],
    ['alg-es256-rsa-kid', 'algorithm', ['--alg', 'ES256', '--kid', 'rsa-1']],
    ['bad-sig-rs256', 'signature', ['--bad-sig']],
    ['bad-sig-es256', 'signature', ['--alg', 'ES256', '--bad-sig']],
    ['other-key-same-kid', 'signature', ['--key', 'other', '--kid', 'rsa-1']],
    ['unknown-kid', 'unknown_key', ['--kid', 'nobody']],
    ['other-key-own-kid', 'unknown_key', ['--key', 'other']],
    ['expired', 'expired', ['--exp-in', '-3600']],
    ['expired-past-skew', 'expired', ['--exp-in', '540']],
    ['not-yet-nbf', 'not_yet_valid', ['--nbf-in', '700']],
    ['not-yet-iat', 'not_yet_valid', ['--iat-in', '3000']],
    ['wrong-aud', 'audience', ['--aud', 'https://kubernetes.default.svc']],
    ['wrong-aud-string', 'audience', ['--aud', 'api', '--aud-string']],
    ['no-aud', 'audience', ['--no-aud']],
    ['aud-number', 'audience', ['--claims', '{"aud": 7}']],
    ['no-k8s', 'claims', ['--no-k8s']],
    ['no-exp', 'claims', ['--no-exp']],
    ['exp-string', 'claims', ['--claims', '{"exp": "tomorrow"}']],
    ['k8s-no-sa', 'claims', ['--claims', '{"kubernetes.io":{"namespace":"shop"}}']],
    ['k8s-ns-number', 'claims', ['--claims', '{"kubernetes.io":{"namespace":5,"serviceaccount":{"name":"web"}}}']],
    ['k8s-empty-sa', 'claims', ['--claims', '{"kubernetes.io":{"namespace":"shop","serviceaccount":{"name":""}}}']],
    ['sub-disagrees', 'claims', ['--claims', '{"sub":"system:serviceaccount:kube-system:admin"}']],
    ['payload-not-json', 'malformed', ['--payload-raw', 'not json']],
    ['crit-header', 'malformed', ['--header', '{"crit":["exp"]}']],
];

function vectors(dir) {
    if (!fs.existsSync(path.join(dir, 'jwks.json'))) keys(dir);
    const cases = path.join(dir, 'cases');
    fs.mkdirSync(cases, { recursive: true });
    const lines = [];
    for (const [name, reason, args] of VECTORS) {
        const o = parseArgs(['--now', String(NOW), ...args]);
        fs.writeFileSync(path.join(cases, name + '.jwt'), mint(dir, o));
        lines.push(`${name} ${reason}`);
    }
    // Structural damage, derived from a good token.
    const good = fs.readFileSync(path.join(cases, 'ok-rs256.jwt'), 'utf8');
    const [h, p, s] = good.split('.');
    const broken = {
        'two-parts': [h, p].join('.'),
        'five-parts': [h, p, s, 'x', 'y'].join('.'),
        'padded-sig': [h, p, s + '='].join('.'),
        'std-base64-header': [h.slice(0, -1) + '+', p, s].join('.'),
        'space-in-sig': [h, p, s.slice(0, 10) + ' ' + s.slice(10)].join('.'),
        'empty-sig': [h, p, ''].join('.'),
        'header-not-json': [b64u('{"alg":"RS256"'), p, s].join('.'),
        'header-array': [b64u('["RS256"]'), p, s].join('.'),
        'header-dup-alg': [b64u('{"alg":"none","alg":"RS256","kid":"rsa-1"}'), p, s].join('.'),
        'header-no-alg': [b64u('{"kid":"rsa-1"}'), p, s].join('.'),
        'empty': '',
    };
    for (const [name, tok] of Object.entries(broken)) {
        fs.writeFileSync(path.join(cases, name + '.jwt'), tok);
        lines.push(`${name} malformed`);
    }
    fs.writeFileSync(path.join(dir, 'cases.txt'), lines.join('\n') + '\n');
}

function main() {
    const [cmd, dir, ...rest] = process.argv.slice(2);
    if (!cmd || !dir) {
        process.stderr.write('usage: mint-token.js keys|token|vectors DIR [options]\n');
        process.exit(2);
    }
    if (cmd === 'keys') keys(dir);
    else if (cmd === 'token') process.stdout.write(mint(dir, parseArgs(rest)));
    else if (cmd === 'vectors') vectors(dir);
    else {
        process.stderr.write(`unknown command ${cmd}\n`);
        process.exit(2);
    }
}

try {
    main();
} catch (e) {
    process.stderr.write(`mint-token.js: ${e.message}\n`);
    process.exit(1);
}
