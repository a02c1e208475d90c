// A real OAuth 2.0 authorization server for Valet's tests: oidc-provider
// (an OpenID-certified implementation) with the client credentials grant,
// and beside it, on the same port, an API (/api/...) that accepts only
// unexpired access tokens this server issued.
//
//   node provider.mjs PORT
//
// Clients come from OIDC_CLIENTS (JSON: [{client_id, client_secret,
// token_endpoint_auth_method}]); access tokens live OIDC_TTL seconds
// (default 600); with OIDC_REFRESH_CLIENT, a refresh token for that client
// is minted and printed first ({"kind": "refresh_token", "value": ...}).
// Every token, revocation and API request is printed to
// stdout as one JSON line ({"kind": "token" | "revocation" | "api", ...}),
// after {"kind": "ready"} once listening. Loopback only.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]').map((c) => ({
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'things.read things.write',
  ...c,
}));
const ttl = Number(process.env.OIDC_TTL || 600);

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'offline_access', 'things.read', 'things.write'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  ttl: { ClientCredentials: ttl, AccessToken: ttl },
  // Every refresh rotates the refresh token; a spent one presented again
  // revokes the whole grant (oidc-provider's reuse detection).
  rotateRefreshToken: true,
});

const log = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/api/')) {
    const header = ctx.get('authorization');
    const token = header.startsWith('Bearer ') ? header.slice(7) : null;
    const found = token
      ? (await provider.ClientCredentials.find(token)) || (await provider.AccessToken.find(token))
      : undefined;
    const valid = found && !found.isExpired;
    ctx.status = valid ? 200 : 401;
    ctx.type = 'application/json';
    ctx.body = valid ? { ok: true, scope: found.scope, client_id: found.clientId } : { error: 'invalid_token' };
    log({ kind: 'api', method: ctx.method, path: ctx.path, status: ctx.status, scope: valid ? found.scope : null, token });
    return;
  }
  await next();
  if (ctx.path === '/token/revocation') {
    log({ kind: 'revocation', status: ctx.status, client_id: ctx.oidc?.client?.clientId || null });
  }
  if (ctx.path === '/token') {
    const params = ctx.oidc?.params || {};
    log({
      kind: 'token',
      grant_type: params.grant_type || null,
      client_id: ctx.oidc?.client?.clientId || null,
      auth: ctx.get('authorization') ? 'basic' : 'post',
      scope: params.scope || null,
      refresh_token: params.refresh_token || null,
      status: ctx.status,
      error: ctx.status === 200 ? null : ctx.body?.error || null,
    });
  }
});

// A refresh token for OIDC_REFRESH_CLIENT, as the tenant's consent (an
// authorization code flow) would have left it: a grant for an account with
// offline_access, and its first refresh token.
async function mintRefreshToken(clientId) {
  const client = await provider.Client.find(clientId);
  const grant = new provider.Grant({ accountId: 'tenant-account', clientId });
  grant.addOIDCScope('openid offline_access');
  const grantId = await grant.save();
  const refreshToken = new provider.RefreshToken({
    accountId: 'tenant-account',
    client,
    grantId,
    gty: 'authorization_code',
    scope: 'openid offline_access',
    authTime: Math.floor(Date.now() / 1000),
  });
  return refreshToken.save();
}

provider.listen(port, '127.0.0.1', async () => {
  if (process.env.OIDC_REFRESH_CLIENT) {
    log({ kind: 'refresh_token', value: await mintRefreshToken(process.env.OIDC_REFRESH_CLIENT) });
  }
  log({ kind: 'ready' });
});
