// A real OpenID provider for the browser tests: the `oidc-provider` package (a
// certified implementation), with its development sign-in pages. Not a stand-in:
// discovery, JWKS, authorization code with PKCE, ID tokens and userinfo are its own.
//
//   node oidc-provider.mjs <port> <client_id> <client_secret> <redirect_uri>
//
// Prints "ready <issuer>" once it listens on 127.0.0.1:<port>. Any password signs in;
// the account name picks the claims below.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
if (!redirectUri) {
  console.error('usage: node oidc-provider.mjs <port> <client_id> <client_secret> <redirect_uri>');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// People as an NHS organisation's directory would describe them.
const accounts = {
  'dr.yh': { name: 'Dr Grace Marsh', roles: ['clinician'], region: 'yh', provider: 'RAE' },
  'analyst.yh': { name: 'Ann Lyst', roles: 'analyst', region: 'yh' },
  'porter': { name: 'No Role', roles: ['estates'] },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], profile: ['name', 'roles', 'region', 'provider'] },
  async findAccount(ctx, id) {
    const a = accounts[id];
    if (!a) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...a }; } };
  },
  pkce: { required: () => true },
  cookies: { keys: ['pennine-browser-test-only'] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
