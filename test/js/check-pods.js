#!/usr/bin/env node
// Checks pods patched by remora-injector (test/integration/injector.sh).
//   node check-pods.js DIR
// For every DIR/NAME.orig.json with a DIR/NAME.patched.json: validate the
// patched pod against the Kubernetes schemas (kubernetes-models) and check
// the injection contract (DESIGN.md "Injection contract") against the
// original. NAME.noschema marks a case whose pod is meant to be refused by
// the API server (so schema validation is skipped). Prints one
// "PASS: ..." or "FAIL: ..." line per check; exit status 1 when any failed.
'use strict';
const fs = require('fs');
const path = require('path');
const assert = require('assert');
const { Pod } = require('kubernetes-models/v1');

const dir = process.argv[2];
let failed = 0;

function eq(a, b) {
  try { assert.deepStrictEqual(a, b); return true; } catch (e) { return false; }
}

const PROBES = { livenessProbe: 'livez', readinessProbe: 'readyz', startupProbe: 'startupz' };
const OURS_VOL = ['remora-token', 'remora-ca-root', 'remora-keys', 'remora-bootstrap', 'remora-policy', 'remora-routes'];

function resolvePort(c, port) {
  if (typeof port === 'number') return port;
  if (/^[0-9]+$/.test(port)) return Number(port);
  const p = (c.ports || []).find((x) => x.name === port);
  return p ? p.containerPort : undefined;
}

function excluded(list, port) {
  return (list || '').replace(/\s/g, '').split(',').filter(Boolean).map(Number).includes(port);
}

// Returns a list of problems (empty: fine).
function invariants(orig, pod) {
  const errs = [];
  const e = (m) => errs.push(m);
  const ann = (pod.metadata && pod.metadata.annotations) || {};
  const oann = (orig.metadata && orig.metadata.annotations) || {};
  if (!ann['remora.io/status']) return ['no remora.io/status annotation'];
  const st = JSON.parse(ann['remora.io/status']);
  const native = st.mode === 'native';

  // Nothing outside what we add may change.
  for (const [k, v] of Object.entries(oann)) if (ann[k] !== v) e(`annotation ${k} changed`);
  const strip = (p) => {
    const c = JSON.parse(JSON.stringify(p));
    c.metadata = c.metadata || {};
    delete c.metadata.annotations;
    delete c.spec.containers; delete c.spec.initContainers; delete c.spec.volumes;
    return c;
  };
  if (!eq(strip(orig), strip(pod))) e('fields outside containers/initContainers/volumes/annotations changed');

  const inits = pod.spec.initContainers || [];
  const conts = pod.spec.containers || [];
  const oinits = orig.spec.initContainers || [];
  if (!inits[0] || inits[0].name !== 'remora-init') e('remora-init is not the first init container');
  let proxy;
  if (native) {
    proxy = inits[1];
    if (!proxy || proxy.name !== 'remora-proxy') e('native: remora-proxy is not init container 1');
    else if (proxy.restartPolicy !== 'Always') e('native: remora-proxy restartPolicy is not Always');
    if (proxy && !proxy.startupProbe) e('native: remora-proxy has no startupProbe');
    if (conts.some((c) => c.name === 'remora-proxy')) e('native: remora-proxy also in containers');
    if (!eq(inits.slice(2), oinits)) e('original init containers changed or reordered');
  } else {
    const ps = conts.filter((c) => c.name === 'remora-proxy');
    if (ps.length !== 1) e(`classic: ${ps.length} remora-proxy containers`);
    proxy = ps[0];
    if (proxy && proxy.restartPolicy !== undefined) e('classic: remora-proxy has a restartPolicy');
    if (!eq(inits.slice(1), oinits)) e('original init containers changed or reordered');
  }
  if (!proxy) return errs;

  // remora-init: root with NET_ADMIN + NET_RAW, nothing else privileged.
  const init = inits[0] || {};
  const isc = init.securityContext || {};
  if (!eq([...((isc.capabilities || {}).add || [])].sort(), ['NET_ADMIN', 'NET_RAW'])) e('remora-init capabilities');
  if (!((isc.capabilities || {}).drop || []).includes('ALL')) e('remora-init does not drop ALL');
  if (isc.privileged !== false || isc.allowPrivilegeEscalation !== false) e('remora-init privileged');
  if (!init.args || init.args[0] !== 'iptables' || !init.command || init.command[0] !== 'remora-proxy') e('remora-init does not run remora-proxy iptables');
  for (const [a, flag] of [['remora.io/exclude-inbound-ports', '--exclude-inbound-ports'],
    ['remora.io/exclude-outbound-ports', '--exclude-outbound-ports'],
    ['remora.io/exclude-outbound-ip-ranges', '--exclude-outbound-ip-ranges']]) {
    const i = (init.args || []).indexOf(flag);
    // issue 14: the valid items of the annotation, in order (a malformed item is
    // dropped with a warning, the others kept); the flag only when one is valid
    const ok = a.endsWith('ranges')
      ? (t) => /^[0-9a-fA-F.:]+(\/[0-9]{1,3})?$/.test(t)
      : (t) => /^[0-9]{1,5}$/.test(t) && +t >= 1 && +t <= 65535;
    const want = (oann[a] || '').replace(/\s/g, '').split(',').filter((t) => t !== '' && ok(t)).join(',');
    if (i >= 0 && (init.args[i + 1] || '') !== want) e(`${flag} does not carry ${a}`);
  }

  // remora-proxy.
  const sc = proxy.securityContext || {};
  if (sc.runAsUser !== 1337 || sc.runAsGroup !== 1337) e('remora-proxy is not UID/GID 1337');
  if (sc.readOnlyRootFilesystem !== true) e('remora-proxy root filesystem is writable');
  if (sc.allowPrivilegeEscalation !== false) e('remora-proxy allows privilege escalation');
  if (!eq((sc.capabilities || {}).drop, ['ALL']) || (sc.capabilities || {}).add) e('remora-proxy capabilities');
  const res = proxy.resources || {};
  if (!res.requests || !res.limits) e('remora-proxy lacks resource requests/limits');
  const env = Object.fromEntries((proxy.env || []).map((v) => [v.name, v]));
  for (const [n, f] of [['POD_NAME', 'metadata.name'], ['POD_NAMESPACE', 'metadata.namespace'],
    ['SERVICE_ACCOUNT', 'spec.serviceAccountName'], ['POD_IP', 'status.podIP']]) {
    if (!env[n] || !env[n].valueFrom || env[n].valueFrom.fieldRef.fieldPath !== f) e(`env ${n} is not the downward API ${f}`);
  }
  const rp = proxy.readinessProbe;
  if (!rp || !rp.httpGet || rp.httpGet.port !== 15020) e('remora-proxy readiness is not on 15020');
  if (!(proxy.ports || []).every((p) => p.name)) e('remora-proxy has unnamed ports');

  // Volumes: originals untouched and first; ours present and right.
  const vols = pod.spec.volumes || [];
  const ovols = orig.spec.volumes || [];
  if (!eq(vols.slice(0, ovols.length), ovols)) e('original volumes changed');
  const vol = Object.fromEntries(vols.map((v) => [v.name, v]));
  if (new Set(vols.map((v) => v.name)).size !== vols.length) e('duplicate volume names');
  const tok = vol['remora-token'];
  const sat = tok && tok.projected && tok.projected.sources.find((s) => s.serviceAccountToken);
  if (!sat || sat.serviceAccountToken.audience !== 'remora-ca') e('no projected token with audience remora-ca');
  if (!vol['remora-ca-root'] || !vol['remora-ca-root'].configMap) e('no CA root ConfigMap volume');
  if (!vol['remora-keys'] || !vol['remora-keys'].emptyDir || vol['remora-keys'].emptyDir.medium !== 'Memory') e('no in-memory keys volume');
  const pol = oann['remora.io/policy'];
  if (pol !== undefined) {
    if (!vol['remora-policy'] || vol['remora-policy'].configMap.name !== pol) e('policy ConfigMap volume missing or misnamed');
  } else if (vol['remora-policy']) e('policy volume without remora.io/policy');
  const rts = oann['remora.io/routes'];
  if (rts !== undefined) {
    if (!vol['remora-routes'] || vol['remora-routes'].configMap.name !== rts) e('routes ConfigMap volume missing or misnamed');
  } else if (vol['remora-routes']) e('routes volume without remora.io/routes');
  const added = vols.slice(ovols.length).map((v) => v.name);
  if (!added.every((n) => OURS_VOL.includes(n))) e('unexpected volumes added');
  if (!eq([...added].sort(), [...st.volumes].sort())) e('status.volumes does not list what was added');

  // Every mount resolves; container names are unique.
  const all = [...inits, ...conts];
  if (new Set(all.map((c) => c.name)).size !== all.length) e('duplicate container names');
  for (const c of all) for (const m of c.volumeMounts || []) if (!vol[m.name]) e(`${c.name} mounts missing volume ${m.name}`);

  // Bootstrap: what the proxy reads through the downward API.
  let boot;
  try { boot = JSON.parse(ann['remora.io/bootstrap']); } catch (x) { e('remora.io/bootstrap is not JSON'); }
  if (boot) {
    const names = (boot.listeners || []).map((l) => `${l.name}@${l.address}`);
    if (!eq(names, ['inbound@0.0.0.0:15006', 'outbound@127.0.0.1:15001', 'inbound6@[::]:15006', 'outbound6@[::1]:15001'])) e('bootstrap listeners');
    const ls = boot.listeners || [];
    if (ls.length === 4 && (ls[0].optional || ls[1].optional || ls[2].optional !== true || ls[3].optional !== true)) e('bootstrap: only the IPv6 listeners are optional');
    if (ls.length === 4 && (ls[2].tls !== ls[0].tls || ls[3].tls !== ls[1].tls)) e('bootstrap: IPv6 listeners differ in tls from their IPv4 twins');
    const id = boot.identity || {};
    const mounted = (p) => (proxy.volumeMounts || []).some((m) => p.startsWith(m.mountPath + '/'));
    for (const k of ['ca_root', 'token_file']) if (!id[k] || !mounted(id[k])) e(`bootstrap identity.${k} is not on a mounted volume`);
    if ((pol !== undefined) !== (boot.policy_file !== undefined)) e('bootstrap policy_file vs remora.io/policy');
    if (boot.policy_file && !mounted(boot.policy_file)) e('bootstrap policy_file not mounted');
    if ((rts !== undefined) !== (boot.routes_file !== undefined)) e('bootstrap routes_file vs remora.io/routes');
    if (boot.routes_file && !mounted(boot.routes_file)) e('bootstrap routes_file not mounted');
    const args = proxy.args || [];
    const ci = args.indexOf('-c');
    if (ci < 0 || !mounted(args[ci + 1])) e('remora-proxy -c does not point into a mounted volume');
  }

  // App containers: same, in order, except rewritten probes.
  const apps = conts.filter((c) => c.name !== 'remora-proxy');
  if (!eq(apps.map((c) => c.name), orig.spec.containers.map((c) => c.name))) e('app containers changed or reordered');
  const probers = env.REMORA_APP_PROBERS ? JSON.parse(env.REMORA_APP_PROBERS.value) : {};
  const grpcProbers = env.REMORA_APP_GRPC_PROBERS ? JSON.parse(env.REMORA_APP_GRPC_PROBERS.value) : {};
  apps.forEach((c, i) => {
    const o = orig.spec.containers[i];
    if (!o) return;
    const restored = JSON.parse(JSON.stringify(c));
    for (const [field, what] of Object.entries(PROBES)) {
      const op = o[field];
      if (op && op.grpc && !op.httpGet && /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(o.name)) {
        // issue 19: the whole probe becomes an httpGet of the health port; the target in
        // REMORA_APP_GRPC_PROBERS (a port excluded from capture is left alone)
        const key = `/app-health/${o.name}/${what}`;
        if (excluded(oann['remora.io/exclude-inbound-ports'], op.grpc.port)) continue;
        const np = c[field] || {};
        if (np.grpc || !np.httpGet || np.httpGet.port !== 15020 || np.httpGet.path !== key) {
          e(`${o.name}.${field}: gRPC probe not rewritten to 15020${key}`); continue;
        }
        const pr = grpcProbers[key];
        const want = { port: op.grpc.port, ...(op.grpc.service !== undefined ? { service: op.grpc.service } : {}) };
        if (!pr || !eq(pr.grpc, want)) { e(`REMORA_APP_GRPC_PROBERS lacks ${key} as ${JSON.stringify(want)}`); continue; }
        delete restored[field].httpGet;
        restored[field].grpc = op.grpc;
        continue;
      }
      if (!op || !op.httpGet || op.httpGet.host) continue;
      const port = resolvePort(o, op.httpGet.port);
      const key = `/app-health/${o.name}/${what}`;
      if (port === undefined || excluded(oann['remora.io/exclude-inbound-ports'], port)) continue;
      const np = c[field].httpGet;
      if (np.port !== 15020 || np.path !== key) { e(`${o.name}.${field} not rewritten to 15020${key}`); continue; }
      const pr = probers[key];
      if (!pr) { e(`REMORA_APP_PROBERS lacks ${key}`); continue; }
      const want = { ...op.httpGet, port };
      if (!want.scheme) want.scheme = 'HTTP';
      if (!want.path) want.path = '/';
      if (!eq(pr.httpGet, want)) e(`${key}: original target not kept (${JSON.stringify(pr.httpGet)})`);
      restored[field].httpGet = op.httpGet;
    }
    if (!eq(restored, o)) e(`app container ${o.name} changed beyond its probes`);
  });
  return errs;
}

const names = fs.readdirSync(dir).filter((f) => f.endsWith('.orig.json')).map((f) => f.slice(0, -10)).sort();
for (const name of names) {
  const pf = path.join(dir, `${name}.patched.json`);
  if (!fs.existsSync(pf)) continue;
  const orig = JSON.parse(fs.readFileSync(path.join(dir, `${name}.orig.json`), 'utf8'));
  const pod = JSON.parse(fs.readFileSync(pf, 'utf8'));
  if (!fs.existsSync(path.join(dir, `${name}.noschema`))) {
    try {
      new Pod(pod).validate();
      console.log(`PASS: kubernetes-models validates ${name}`);
    } catch (x) {
      failed++;
      console.log(`FAIL: kubernetes-models validates ${name}: ${String(x.message).split('\n').slice(0, 4).join(' | ')}`);
    }
  }
  let errs;
  try { errs = invariants(orig, pod); } catch (x) { errs = [`exception: ${x.message}`]; }
  if (errs.length === 0) console.log(`PASS: injection contract holds for ${name}`);
  else { failed++; console.log(`FAIL: injection contract holds for ${name}: ${errs.join('; ')}`); }
}
process.exit(failed ? 1 : 0);
