#!/usr/bin/env node
// Validates rendered Kubernetes manifests (YAML on stdin, e.g. from
// `kubectl kustomize manifests/`) with kubernetes-models, one
// "PASS: ..."/"FAIL: ..." line per object; objects of kinds it has no
// model for (cert-manager's) are listed as skipped. Exit 1 when any failed.
'use strict';
const fs = require('fs');
const yaml = require('js-yaml');
const models = require('kubernetes-models');

const text = fs.readFileSync(0, 'utf8');
let failed = 0;
for (const doc of yaml.loadAll(text)) {
  if (!doc) continue;
  const what = `${doc.kind} ${doc.metadata && doc.metadata.namespace ? doc.metadata.namespace + '/' : ''}${doc.metadata && doc.metadata.name}`;
  const [group, version] = doc.apiVersion.includes('/') ? doc.apiVersion.split('/') : ['', doc.apiVersion];
  let mod;
  try {
    mod = require(group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`);
  } catch (e) {
    console.log(`SKIP: no model for ${doc.apiVersion} ${what}`);
    continue;
  }
  const Model = mod[doc.kind];
  if (!Model) { console.log(`SKIP: no model for ${doc.apiVersion} ${what}`); continue; }
  try {
    new Model(doc).validate();
    console.log(`PASS: manifest ${what} is valid`);
  } catch (e) {
    failed++;
    console.log(`FAIL: manifest ${what}: ${String(e.message).split('\n').slice(0, 4).join(' | ')}`);
  }
}
void models;
process.exit(failed ? 1 : 0);
