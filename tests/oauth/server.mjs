#!/usr/bin/env node
// A real OAuth 2 authorization server (oidc-provider) on loopback, configured the way
// Segment's OAuth works for the tracking API, for the SDK's OAuth tests.
//
//   node tests/oauth/server.mjs --config CONFIG.json [--port N] [--ttl SECONDS]
//                               [--max-lifetime SECONDS] [--ignore-stdin]
//
// CONFIG.json (every key optional except client_id and one of jwks / jwks_path):
//   {
//     "port": 0,                              // 0 = pick a free port
//     "client_id": "sdk-client",              // the SDK's client (private_key_jwt, RS256)
//     "jwks": {"keys": [{...public JWK with kid...}]},   // or "jwks_path": "public.jwks.json"
//     "access_token_ttl": 3600,               // seconds, integer >= 1
//     "extra_clients": [{"client_id": ..., "jwks": {...}, "access_token_ttl": 2}],
//     "scope": "tracking_api:write",          // space-separated scopes the client may get
//     "resource": "urn:lambda-analytics:tracking-api",    // audience of the access tokens
//     "collector_client_id": "collector",     // client_secret_basic; may introspect and revoke
//     "collector_client_secret": "...",       //   any token (other clients: only their own)
//     "max_assertion_lifetime": 60,           // most seconds from a client assertion's iat to exp
//     "max_lifetime": 600                     // seconds before the server exits by itself
//   }
//
// When ready it prints exactly one JSON line to stdout:
//   {"issuer": "http://127.0.0.1:PORT", "token_endpoint": ..., "introspection_endpoint": ...,
//    "revocation_endpoint": ..., "jwks_uri": ..., "resource": ..., "pid": ...}
// and nothing else to stdout; diagnostics (including why a client assertion was refused) go
// to stderr.  It exits when its standard input reaches EOF (its parent died or closed the
// pipe), on SIGTERM/SIGINT, and after max_lifetime seconds, so no test leaves it running.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

const started = process.hrtime.bigint();

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    port: { type: 'string' },
    ttl: { type: 'string' },
    'max-lifetime': { type: 'string' },
    'ignore-stdin': { type: 'boolean', default: false },
  },
  strict: true,
});

function fail(message) {
  process.stderr.write(`oauth server: ${message}\n`);
  process.exit(2);
}

const config = args.config ? JSON.parse(fs.readFileSync(args.config, 'utf8')) : {};
const integer = (value, name, min) => {
  const number = Number(value);
  if (!Number.isInteger(number) || number < min) fail(`${name} must be an integer >= ${min}`);
  return number;
};

const port = integer(args.port ?? config.port ?? 0, 'port', 0);
const accessTokenTTL = integer(args.ttl ?? config.access_token_ttl ?? 3600, 'ttl', 1);
const maxLifetime = integer(args['max-lifetime'] ?? config.max_lifetime ?? 600, 'max-lifetime', 1);
const clientId = config.client_id ?? fail('config.client_id is required');
const clientJwks = config.jwks
  ?? (config.jwks_path ? JSON.parse(fs.readFileSync(config.jwks_path, 'utf8')) : undefined)
  ?? fail('config.jwks or config.jwks_path is required');
// More private_key_jwt clients on the same server, each with its own keys and token lifetime,
// so one running server can serve tests that need different settings.
const extraClients = (config.extra_clients ?? []).map((extra, i) => ({
  clientId: extra.client_id ?? fail(`extra_clients[${i}].client_id is required`),
  jwks: extra.jwks ?? fail(`extra_clients[${i}].jwks is required`),
  ttl: integer(extra.access_token_ttl ?? accessTokenTTL, `extra_clients[${i}].access_token_ttl`, 1),
}));
const ttlByClient = new Map([[clientId, accessTokenTTL], ...extraClients.map((c) => [c.clientId, c.ttl])]);
const tokenTTL = (ctx, token, client) => ttlByClient.get(client?.clientId) ?? accessTokenTTL;
const scope = config.scope ?? 'tracking_api:write';
const maxAssertionLifetime = integer(config.max_assertion_lifetime ?? 60, 'max_assertion_lifetime', 1);
const resource = config.resource ?? 'urn:lambda-analytics:tracking-api';
const collectorId = config.collector_client_id ?? 'collector';
const collectorSecret = config.collector_client_secret ?? fail('config.collector_client_secret is required');

// Exit on our own: parent gone (stdin EOF), signal, or the lifetime cap.
function shutdown(reason, code = 0) {
  process.stderr.write(`oauth server: exiting (${reason})\n`);
  process.exit(code);
}
if (!args['ignore-stdin']) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
setTimeout(() => shutdown(`max lifetime ${maxLifetime}s`), maxLifetime * 1000).unref();

// oidc-provider is imported after the argument checks so a bad command line fails fast.
const { default: Provider, errors } = await import('oidc-provider');

// Bind first: with port 0 the issuer (which contains the port) is only known after listen.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

// The provider's own signing key (only used for its jwks_uri; tokens are opaque).  An EC key
// is generated per run because it takes well under a millisecond, unlike RSA.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256', kid: 'provider-es256' };

const allowedScopes = new Set(scope.split(' ').filter(Boolean));
const resourceServer = {
  scope,
  audience: resource,
  accessTokenFormat: 'opaque', // the lifetime is per client: see ttl below
};
const sdkClient = (id, jwks) => ({
  client_id: id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: 'RS256',
  jwks,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  // No client `scope` metadata: oidc-provider only allows OpenID scopes there, and the
  // resource server below is what grants tracking_api:write.
});

const provider = new Provider(issuer, {
  clients: [
    sdkClient(clientId, clientJwks),
    ...extraClients.map((c) => sdkClient(c.clientId, c.jwks)),
    {
      client_id: collectorId,
      client_secret: collectorSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys: [signingJwk] },
  routes: {
    token: '/token',
    introspection: '/token/introspection',
    revocation: '/token/revocation',
    jwks: '/jwks',
  },
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256'],
    idTokenSigningAlgValues: ['ES256'],
  },
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // No OpenID scopes: a client_credentials request only ever gets resource-server scopes.
  scopes: [],
  claims: {},
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // The collector (a confidential client) may introspect any token; so may its owner.
      allowedPolicy: async (ctx, client, token) => client.clientId === collectorId
        || client.clientId === token.clientId,
    },
    // Likewise for revocation: the collector may revoke any token, a client only its own
    // (oidc-provider refuses another client's token with invalid_request).
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => {
        if (client.clientId === collectorId || client.clientId === token.clientId) return true;
        throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
      },
    },
    // Every token is for the tracking API: a request without `resource` gets this one, and
    // the requested scope is granted when (and only as far as) this resource server allows it.
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator) => {
        if (indicator !== resource) {
          throw new errors.InvalidTarget(`unknown resource ${indicator}`);
        }
        // oidc-provider would silently drop a scope the resource server does not have;
        // refuse it instead, as an OAuth server should.
        const requested = ctx.oidc?.params?.scope;
        if (ctx.oidc?.route === 'token' && typeof requested === 'string') {
          const unknown = requested.split(' ').filter((value) => value && !allowedScopes.has(value));
          if (unknown.length) {
            throw new errors.InvalidScope('requested scope is not allowed', unknown.join(' '));
          }
        }
        return resourceServer;
      },
    },
  },
  ttl: {
    ClientCredentials: tokenTTL,
    AccessToken: tokenTTL,
  },
  // Same machine: 5 s of clock skew is plenty.
  clockTolerance: 5,
  // Beyond what oidc-provider checks (alg, iss, sub, aud, exp, jti, signature, replay): what
  // Segment's protocol also asks of an assertion.
  assertJwtClientAuthClaimsAndHeader: async (ctx, claims, header) => {
    if (typeof header.kid !== 'string' || !header.kid) {
      throw new errors.InvalidClientAuth('kid (key id) header is required');
    }
    if (typeof claims.iat !== 'number') {
      throw new errors.InvalidClientAuth('iat (issued at) must be provided in the client_assertion JWT');
    }
    if (claims.exp - claims.iat > maxAssertionLifetime) {
      throw new errors.InvalidClientAuth(`exp must be at most ${maxAssertionLifetime}s after iat`);
    }
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Say why a request was refused: the HTTP body only says "client authentication failed".
for (const event of ['grant.error', 'introspection.error', 'revocation.error', 'server_error']) {
  provider.on(event, (ctx, error) => {
    const detail = error.error_detail ? `: ${error.error_detail}` : '';
    process.stderr.write(`oauth server: ${event} ${error.error ?? error.name}${detail}\n`);
  });
}

server.on('request', provider.callback());
// Node closes idle keep-alive connections after 5 s; a client reusing one at that moment gets
// a reset.  Tests idle longer than that (token expiry), so keep connections for a minute.
server.keepAliveTimeout = 60_000;

const ms = Number(process.hrtime.bigint() - started) / 1e6;
process.stdout.write(`${JSON.stringify({
  issuer,
  token_endpoint: `${issuer}/token`,
  introspection_endpoint: `${issuer}/token/introspection`,
  revocation_endpoint: `${issuer}/token/revocation`,
  jwks_uri: `${issuer}/jwks`,
  resource,
  scope,
  access_token_ttl: accessTokenTTL,
  pid: process.pid,
  startup_ms: Math.round(ms),
})}\n`);
