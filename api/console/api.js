// The console's only way to the server: the public /v1 API with a bearer token.
// Access tokens live in memory; the refresh token (rotated on every use) is kept in
// localStorage so a reload stays logged in. One refresh at a time: concurrent 401s
// wait for the same rotation instead of racing each other with a spent token.

const SESSION_KEY = "coexist.session";
const DEVICE_KEY = "coexist.device";

let access = null;
let accessExpiresAt = 0;
let refreshing = null;
const listeners = new Set();

export function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id) {
    id = "web-" + crypto.randomUUID().replaceAll("-", "").slice(0, 16);
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

function stored() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
  } catch {
    return null;
  }
}

export function loggedIn() {
  return stored() !== null;
}

export function onLogout(fn) {
  listeners.add(fn);
}

function keep(pair) {
  access = pair.access_token;
  accessExpiresAt = Date.now() + (pair.expires_in - 10) * 1000;
  localStorage.setItem(
    SESSION_KEY,
    JSON.stringify({ refresh_token: pair.refresh_token, session_id: pair.session_id }),
  );
}

export function forget() {
  access = null;
  accessExpiresAt = 0;
  localStorage.removeItem(SESSION_KEY);
  for (const fn of listeners) fn();
}

/** The error the API sent, as an Error whose message is its reason. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error : {};
    super(detail.message || `HTTP ${status}`);
    this.status = status;
    this.code = detail.code || "";
  }
}

async function rotate() {
  const session = stored();
  if (!session) throw new ApiError(401, { error: { message: "not logged in" } });
  const resp = await fetch("/v1/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: session.refresh_token }),
  });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    // A spent or revoked refresh token: this device is logged out.
    if (resp.status === 401) forget();
    throw new ApiError(resp.status, body);
  }
  keep(body);
}

/** A valid access token, refreshed (once, shared) when it is about to expire. */
export async function token() {
  if (access && Date.now() < accessExpiresAt) return access;
  if (!refreshing) refreshing = rotate().finally(() => (refreshing = null));
  await refreshing;
  return access;
}

function newKey() {
  return crypto.randomUUID();
}

/**
 * Calls the API. `body` is sent as JSON unless it is a Blob/File (sent raw with its
 * type). Every POST carries an Idempotency-Key, reused on the one retry after a
 * refresh, so a retried action never happens twice.
 */
export async function call(method, path, body, options = {}) {
  const key = options.idempotencyKey || (method === "POST" ? newKey() : null);
  for (let attempt = 0; ; attempt++) {
    const headers = { Authorization: "Bearer " + (await token()) };
    if (key) headers["Idempotency-Key"] = key;
    let payload;
    if (body instanceof Blob) {
      headers["Content-Type"] = body.type || "application/octet-stream";
      payload = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const resp = await fetch(path, { method, headers, body: payload });
    if (resp.status === 401 && attempt === 0) {
      access = null;
      continue;
    }
    const text = await resp.text();
    const json = text ? JSON.parse(text) : null;
    if (!resp.ok) throw new ApiError(resp.status, json);
    return json;
  }
}

export const get = (path) => call("GET", path);
export const post = (path, body, options) => call("POST", path, body, options);

export async function requestCode(contact) {
  const resp = await fetch("/v1/auth/otp/request", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(contact),
  });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body.challenge_id;
}

export async function verifyCode(challengeId, code) {
  const resp = await fetch("/v1/auth/otp/verify", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      challenge_id: challengeId,
      code,
      device_id: deviceId(),
      device_name: deviceName(),
    }),
  });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body);
  keep(body);
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox/.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chrome" : /Safari/.test(ua) ? "Safari" : "Browser";
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS" : /Mac/.test(ua) ? "macOS" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return `Console on ${browser}${os ? " (" + os + ")" : ""}`;
}

/** Ends this session (or every session of the agent), then forgets it here. */
export async function logout(everywhere) {
  try {
    await post(everywhere ? "/v1/auth/logout-all" : "/v1/auth/logout");
  } finally {
    forget();
  }
}
