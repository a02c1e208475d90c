// A real OAuth 2.0 authorization server for Valet's tests: oidc-provider
// (an OpenID-certified implementation) with the client credentials grant,
// and beside it, on the same port, an API (/api/...) that accepts only
// unexpired access tokens this server issued.
//
//   node provider.mjs PORT
//
// Clients come from OIDC_CLIENTS (JSON: [{client_id, client_secret,
// token_endpoint_auth_method}]); access tokens live OIDC_TTL seconds
// (default 600). Every token, revocation and API request is printed to
// stdout as one JSON line ({"kind": "token" | "revocation" | "api", ...}),
// after {"kind": "ready"} once listening. Loopback only.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]').map((c) => ({
  ...c,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'things.read things.write',
}));
const ttl = Number(process.env.OIDC_TTL || 600);

const provider = new Provider(issuer, {
  clients,
  scopes: ['things.read', 'things.write'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  ttl: { ClientCredentials: ttl },
});

const log = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/api/')) {
    const header = ctx.get('authorization');
    const token = header.startsWith('Bearer ') ? header.slice(7) : null;
    const found = token ? await provider.ClientCredentials.find(token) : undefined;
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
      status: ctx.status,
      error: ctx.status === 200 ? null : ctx.body?.error || null,
    });
  }
});

provider.listen(port, '127.0.0.1', () => log({ kind: 'ready' }));
