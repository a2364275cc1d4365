#!/usr/bin/env node
// A real FHIR client library against a real `pennine node`: fhir-kit-client (Node)
// discovers the token endpoint (SMART configuration and CapabilityStatement), gets a
// token with client_secret_basic, and creates, reads, searches with paging, updates,
// runs a transaction, reads history and deletes; a missing resource is its 404.
//
// Usage: node fhir_kit_check.js <path to the pennine binary>   (run by .ci/run)
'use strict';
const { spawn } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const Client = require('fhir-kit-client');

function assert(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function main(binary) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pennine-fkc-'));
  const secret = crypto.randomBytes(24).toString('hex');
  const hash = crypto.createHash('sha256').update(secret).digest('hex');
  fs.writeFileSync(path.join(work, 'clients.toml'),
    `[[client]]\nid = "fkc"\nroles = ["vendor", "analyst"]\nregion = "nenc"\nsecret_sha256 = "${hash}"\n`);
  const node = spawn(binary, ['node', '--region', 'nenc', '--listen', '127.0.0.1:0',
    '--data', path.join(work, 'data'), '--clients', path.join(work, 'clients.toml')],
  { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    const first = await new Promise((resolve, reject) => {
      const lines = readline.createInterface({ input: node.stdout });
      lines.once('line', resolve);
      node.once('exit', (code) => reject(new Error(`the node exited (${code})`)));
    });
    const fhir = first.trim().split(/\s+/).pop();
    const client = new Client({ baseUrl: fhir });

    const smart = await client.smartAuthMetadata();
    const tokenUrl = String(smart.tokenUrl);
    assert(tokenUrl.endsWith('/auth/token'), `token URL ${tokenUrl}`);
    const capability = await client.capabilityStatement();
    const oauth = (capability.rest[0].security.extension || [])
      .find((e) => e.url === 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    const token = oauth && oauth.extension.find((e) => e.url === 'token');
    assert(token && token.valueUri === tokenUrl, 'the CapabilityStatement names the same token endpoint');

    const res = await fetch(tokenUrl, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`fkc:${secret}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: 'grant_type=client_credentials&scope=launch%2Fpatient%20system%2F*.cruds',
    });
    const granted = await res.json();
    assert(res.status === 200 && granted.access_token, `token: ${JSON.stringify(granted)}`);
    client.bearerToken = granted.access_token;

    const family = `Fkc${crypto.randomBytes(4).toString('hex')}`;
    const ids = [];
    for (let i = 0; i < 5; i += 1) {
      const made = await client.create({
        resourceType: 'Patient',
        body: { resourceType: 'Patient', name: [{ family, given: [`G${i}`] }] },
      });
      assert(made.id, `create: ${JSON.stringify(made)}`);
      ids.push(made.id);
    }
    const read = await client.read({ resourceType: 'Patient', id: ids[0] });
    assert(read.name[0].family === family, 'read');

    let page = await client.search({ resourceType: 'Patient', searchParams: { family, _count: 2 } });
    const found = [];
    for (;;) {
      (page.entry || []).forEach((e) => found.push(e.resource.id));
      if (!(page.link || []).some((l) => l.relation === 'next')) break;
      page = await client.nextPage({ bundle: page });
    }
    assert(JSON.stringify(found.sort()) === JSON.stringify([...ids].sort()), `paging found ${found}`);

    read.gender = 'male';
    const updated = await client.update({ resourceType: 'Patient', id: ids[0], body: read });
    assert(updated.meta.versionId === '2', `update: ${JSON.stringify(updated.meta)}`);
    const history = await client.history({ resourceType: 'Patient', id: ids[0] });
    assert(history.entry.length === 2, 'history has both versions');

    const tx = await client.transaction({
      body: {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { fullUrl: 'urn:uuid:6a1c1b64-0f7e-4b7e-9d71-3b1e2f1a0c01',
            resource: { resourceType: 'Patient', name: [{ family }] },
            request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'Observation', status: 'final', code: { text: 'fkc' },
            subject: { reference: 'urn:uuid:6a1c1b64-0f7e-4b7e-9d71-3b1e2f1a0c01' } },
          request: { method: 'POST', url: 'Observation' } },
        ],
      },
    });
    assert(tx.type === 'transaction-response' && tx.entry.every((e) => e.response.status.startsWith('201')),
      `transaction: ${JSON.stringify(tx)}`);

    await client.delete({ resourceType: 'Patient', id: ids[1] });
    let gone = null;
    try {
      await client.read({ resourceType: 'Patient', id: ids[1] });
    } catch (e) {
      gone = e.response && e.response.status;
    }
    assert(gone === 410 || gone === 404, `a deleted patient reads as 410/404, got ${gone}`);
    console.log('fhir-kit-client: discovery, token, create/read/search with paging/update/history/transaction/delete: OK');
  } finally {
    node.kill('SIGKILL');
  }
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
