// The real node `oidc-provider` as the issuer for the frontend's process tests.
// Run with: OIDC_PROVIDER_MODULE=.cache/node/node_modules/oidc-provider/lib/index.js \
//           node oidc_provider.mjs PORT REDIRECT_URI
// One confidential client ("agentmesh" / "s3cret", client_secret_basic), PKCE required (S256),
// devInteractions for the login and consent pages (any login name, any password), and every
// account gets an email, a name and groups (alice alone is in agentmesh-admins, which the
// frontend's admin_claim makes an administrator). Binds only to 127.0.0.1; prints "ready"
// when listening.
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [port, redirectUri] = process.argv.slice(2);
if (!port || !redirectUri) {
  console.error('usage: oidc_provider.mjs PORT REDIRECT_URI');
  process.exit(2);
}
const modulePath = process.env.OIDC_PROVIDER_MODULE;
if (!modulePath) {
  console.error('set OIDC_PROVIDER_MODULE to oidc-provider/lib/index.js (scripts/test installs it)');
  process.exit(2);
}
const { default: Provider } = await import(pathToFileURL(resolve(modulePath)).href);

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'agentmesh',
    client_secret: 's3cret',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  // `groups` is its own scope, as at most providers; the frontend's admin_claim reads it.
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  // The id_token carries the claims, not only the userinfo endpoint.
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        // alice administers the mesh (the Security Inspector); everyone else is staff.
        const groups = id === 'alice' ? ['agentmesh-admins', 'staff'] : ['staff'];
        return { sub: id, email: `${id}@example.com`, email_verified: true, name: `${id} (test user)`, groups };
      },
    };
  },
  cookies: { keys: ['agentmesh-test-only'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
