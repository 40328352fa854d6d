// harness.mjs - the SDK compatibility tests' runner (node >= 20, no dependencies
// beyond the two SDKs under test).
//
// Starts build/sluice-mock and build/sluice on port 0 (each announces
// "<name>: ready on HOST:PORT" on stderr), with a temporary config that puts
// an OpenAI-format and an Anthropic-format provider on the mock, then runs
// every registered test in order, one at a time, and prints one line per
// case, as the other test programs do:
//
//     PASS name | FAIL name: why | SKIP name: why
//
// Test names contain no spaces or colons (tests/run's -k matches them).
// Before each test the mock's counters are reset (POST /mock/reset), so a
// test sees, through t.upstream(), the last request the gateway sent
// upstream for it. After the last test the gateway is stopped with SIGTERM
// and must exit 0 without a sanitizer report ("sdk.gateway_clean_exit").
//
// Environment: SLUICE_BIN / SLUICE_MOCK_BIN (binaries), SLUICE_TEST_LOGS
// (log directory, default build/test-logs/manual/sdk), SLUICE_TEST_FILTER
// or "-k PATTERN" (regex on test names), SLUICE_TIME_SCALE (stretches the
// time limits; 3 by default under an ASan build).

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual, inspect } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
const BUILD = path.join(ROOT, 'build');
const GATEWAY_BIN = process.env.SLUICE_BIN || path.join(BUILD, 'sluice');
const MOCK_BIN = process.env.SLUICE_MOCK_BIN || path.join(BUILD, 'sluice-mock');
const LOG_DIR = process.env.SLUICE_TEST_LOGS || path.join(BUILD, 'test-logs', 'manual', 'sdk');
const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'runtime error:', 'LeakSanitizer',
	'ERROR: ThreadSanitizer', 'WARNING: ThreadSanitizer'];

function sanitizedBuild() {
	try {
		return fs.readFileSync(path.join(BUILD, 'config.h'), 'utf8').includes('#define SL_SANITIZE 1');
	} catch {
		return false;
	}
}
export const TIME_SCALE = Number(process.env.SLUICE_TIME_SCALE) || (sanitizedBuild() ? 3 : 1);

// What the tests send and what the config names (as in tests/lib/harness.py).
const TLS_CERTS = process.env.SLUICE_SDK_TLS_DIR
	? JSON.parse(fs.readFileSync(path.join(process.env.SLUICE_SDK_TLS_DIR, 'certs.json'), 'utf8'))
	: null;
export const CLIENT_KEY = process.env.SLUICE_SDK_CLIENT_KEY || 'sk-client-test-0123456789';
export const OPENAI_KEY = 'sk-mock-openai';
export const ANTHROPIC_KEY = 'sk-mock-anthropic';
export const OPENAI_UPSTREAM_MODEL = 'gpt-4o-mini-2024-07-18';
export const ANTHROPIC_UPSTREAM_MODEL = 'claude-sonnet-4-5-20250929';
// Fault tests whose upstream answers an error (429 ...) get a provider of
// their own, so that a key cool-down after the error (SPEC section 4) cannot
// change what the next tests see: ISOLATED models per format.
const ISOLATED = 8;

// The two kinds of upstream a test can target: a model served by an
// OpenAI-format provider and one served by an Anthropic-format provider.
export const TARGETS = [
	{ tag: 'to_openai', format: 'openai', model: 'gpt-4o-mini', upstreamModel: OPENAI_UPSTREAM_MODEL,
	  path: '/v1/chat/completions' },
	{ tag: 'to_anthropic', format: 'anthropic', model: 'claude-sonnet-4-5',
	  upstreamModel: ANTHROPIC_UPSTREAM_MODEL, path: '/v1/messages' },
];

// The mock's words (tools/mock.md): content = the first N, default 8.
const WORDS = ['Hello', ' from', ' the', ' mock', ' provider', '.', ' The', ' quick', ' brown',
	' fox', ' jumps', ' over', ' a', ' lazy', ' dog', '.'];
export function mockText(n = 8) {
	let s = '';
	for (let i = 0; i < n; i++)
		s += i && i % 16 === 0 ? ' Hello' : WORDS[i % 16];
	return s;
}

// A 1x1 PNG, base64.
export const PNG_B64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';

// --------------------------------------------------------------------------
// Assertions

export class TestError extends Error {}
export class Skip extends Error {}

function show(v) {
	return inspect(v, { depth: 6, breakLength: Infinity, maxStringLength: 200, maxArrayLength: 20 });
}

export function ok(cond, what) {
	if (!cond)
		throw new TestError(what || 'assertion failed');
}

export function eq(got, want, what) {
	if (!isDeepStrictEqual(got, want))
		throw new TestError(`${what || 'value'}: got ${show(got)}, want ${show(want)}`);
}

export function positiveInt(v, what) {
	if (!Number.isInteger(v) || v <= 0)
		throw new TestError(`${what}: got ${show(v)}, want an integer > 0`);
}

// expectError runs fn (async) and returns the error it throws, which must be
// an instance of cls with the given status.
export async function expectError(fn, cls, status, what = 'request') {
	let result;
	try {
		result = await fn();
	} catch (err) {
		if (!(err instanceof cls)) {
			const name = err?.constructor?.name || typeof err;
			throw new TestError(`${what}: threw ${name} (status ${err?.status}) ` +
				`${String(err?.message).slice(0, 200)}, want ${cls.name} ${status}`);
		}
		eq(err.status, status, `${what}: status`);
		return err;
	}
	throw new TestError(`${what}: succeeded (${show(result).slice(0, 200)}), want ${cls.name} ${status}`);
}

// text of an Anthropic `system` / content that may be a string or blocks;
// of an OpenAI content that may be a string or parts.
export function flatText(v) {
	if (v == null)
		return '';
	if (typeof v === 'string')
		return v;
	if (Array.isArray(v))
		return v.map((b) => (typeof b === 'string' ? b : b?.text ?? '')).join('');
	return String(v);
}

// --------------------------------------------------------------------------
// Servers

class Server {
	constructor(name, argv, logPath) {
		this.name = name;
		this.argv = argv;
		this.logPath = logPath;
		this.addr = null;
		this.proc = null;
		this.exit = null;            // {code, signal} once exited
		this.sanitizerLines = [];
		this.tail = [];
	}

	start(timeoutMs) {
		if (!isExecutable(this.argv[0]))
			throw new TestError(`${path.relative(ROOT, this.argv[0])} does not exist (did it build?)`);
		this.log = fs.openSync(this.logPath, 'w');
		fs.writeSync(this.log, `$ ${this.argv.join(' ')}\n`);
		// setpriv --pdeathsig: the server dies with this process even if it is
		// SIGKILLed (the python harness's PR_SET_PDEATHSIG).
		let argv = this.argv;
		if (hasSetprivPdeathsig())
			argv = ['setpriv', '--pdeathsig', 'KILL', '--', ...argv];
		this.proc = spawn(argv[0], argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
		const ready = new RegExp(`^${this.name}: ready on (\\[[^\\]]*\\]|[^\\s:]+):(\\d+)\\s*$`);
		return new Promise((resolve, reject) => {
			let settled = false;
			const settle = (err) => {
				if (settled)
					return;
				settled = true;
				clearTimeout(timer);
				if (err) {
					this.kill();
					reject(err);
				} else {
					resolve(this.addr);
				}
			};
			const timer = setTimeout(() => settle(new TestError(
				`${this.name} did not start: no ready line within ${timeoutMs / 1000}s; log: ` +
				this.tail.slice(-5).join(' | '))), timeoutMs);
			const onLine = (line) => {
				fs.writeSync(this.log, line + '\n');
				this.tail = [...this.tail, line].slice(-20);
				if (SANITIZER_MARKERS.some((m) => line.includes(m)))
					this.sanitizerLines.push(line);
				if (!this.addr) {
					const m = ready.exec(line);
					if (m) {
						this.addr = { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
						settle(null);
					}
				}
			};
			for (const s of [this.proc.stdout, this.proc.stderr])
				lineReader(s, onLine);
			this.exited = new Promise((res) => {
				this.proc.on('exit', (code, signal) => {
					this.exit = { code, signal };
					settle(new TestError(`${this.name} did not start: exited with ` +
						`${statusText(this.exit)}; log: ${this.tail.slice(-5).join(' | ')}`));
					res(this.exit);
				});
			});
			this.proc.on('error', (err) => settle(new TestError(`${this.name}: ${err.message}`)));
		});
	}

	// What is wrong with the process now: it died, or reported a sanitizer error.
	problems() {
		const out = [];
		if (this.exit)
			out.push(`${this.name} exited unexpectedly (${statusText(this.exit)})`);
		if (this.sanitizerLines.length)
			out.push(`${this.name} sanitizer report: ${this.sanitizerLines[0]} ` +
				`(see ${path.relative(ROOT, this.logPath)})`);
		return out;
	}

	// SIGTERM, wait, SIGKILL when stuck; the problems (non-zero exit, hang, sanitizer).
	async stop(timeoutMs) {
		if (!this.proc)
			return [];
		const out = [];
		if (this.exit) {
			out.push(`${this.name} exited unexpectedly (${statusText(this.exit)})`);
		} else {
			this.proc.kill('SIGTERM');
			const t = new Promise((res) => setTimeout(res, timeoutMs, 'timeout'));
			if ((await Promise.race([this.exited, t])) === 'timeout') {
				out.push(`${this.name} still running ${timeoutMs / 1000}s after SIGTERM`);
				this.kill();
			}
			await this.exited;
			if (this.exit.code !== 0 && !out.length)
				out.push(`${this.name} exited with ${statusText(this.exit)}`);
		}
		if (this.sanitizerLines.length)
			out.push(`${this.name} sanitizer report: ${this.sanitizerLines[0]} ` +
				`(see ${path.relative(ROOT, this.logPath)})`);
		return out;
	}

	kill() {
		if (this.proc && !this.exit)
			this.proc.kill('SIGKILL');
	}
}

function lineReader(stream, onLine) {
	let buf = '';
	stream.setEncoding('utf8');
	stream.on('data', (d) => {
		buf += d;
		let i;
		while ((i = buf.indexOf('\n')) >= 0) {
			onLine(buf.slice(0, i).replace(/\r$/, ''));
			buf = buf.slice(i + 1);
		}
	});
	stream.on('end', () => {
		if (buf)
			onLine(buf);
	});
}

function statusText(e) {
	if (!e)
		return 'still running';
	return e.signal ? `signal ${e.signal}` : `status ${e.code}`;
}

function isExecutable(p) {
	try {
		fs.accessSync(p, fs.constants.X_OK);
		return true;
	} catch {
		return false;
	}
}

let setprivOk;
function hasSetprivPdeathsig() {
	if (setprivOk === undefined) {
		const r = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
		setprivOk = r.status === 0 && /--pdeathsig/.test(r.stdout || '');
	}
	return setprivOk;
}

// Why the gateway cannot run here (no io_uring), asked of the python
// harness, which knows how; null when it can (or python3 is missing: then
// the gateway's own start tells).
function ioUringMissing() {
	const r = spawnSync('python3', ['-c',
		'import sys; sys.path.insert(0, "tests/lib"); import harness; print(harness.io_uring_missing() or "")'],
	{ cwd: ROOT, encoding: 'utf8', timeout: 10000 });
	if (r.status !== 0)
		return null;
	return r.stdout.trim() || null;
}

export function baseConfig(mockPort, dataDir) {
	const providers = {
		'mock-openai': {
			base_url: `http://127.0.0.1:${mockPort}/v1`, format: 'openai', keys: [OPENAI_KEY],
			timeouts: { connect_ms: 2000, first_byte_ms: 20000, idle_ms: 20000 },
		},
		'mock-anthropic': {
			base_url: `http://127.0.0.1:${mockPort}`, format: 'anthropic', keys: [ANTHROPIC_KEY],
			anthropic_version: '2023-06-01',
		},
	};
	const models = {
		'gpt-4o-mini': {
			targets: [{ provider: 'mock-openai', model: OPENAI_UPSTREAM_MODEL }],
			price: { input: '0.15', output: '0.60', cached_input: '0.075' },
			context_window: 128000,
		},
		'claude-sonnet-4-5': {
			aliases: [ANTHROPIC_UPSTREAM_MODEL],
			targets: [{ provider: 'mock-anthropic', model: ANTHROPIC_UPSTREAM_MODEL }],
			price: { input: '3.00', output: '15.00', cache_write: '3.75', cached_input: '0.30' },
			context_window: 200000,
		},
	};
	for (let i = 0; i < ISOLATED; i++) {
		providers[`iso-openai-${i}`] = { ...providers['mock-openai'] };
		providers[`iso-anthropic-${i}`] = { ...providers['mock-anthropic'] };
		models[`gpt-4o-mini-iso${i}`] = {
			targets: [{ provider: `iso-openai-${i}`, model: OPENAI_UPSTREAM_MODEL }],
		};
		models[`claude-sonnet-4-5-iso${i}`] = {
			targets: [{ provider: `iso-anthropic-${i}`, model: ANTHROPIC_UPSTREAM_MODEL }],
		};
	}
	// SLUICE_SDK_TLS_DIR (tests/sdk/run --tls): the SDKs speak HTTPS to a TLS
	// listener (listed first: the ready line names it); NODE_EXTRA_CA_CERTS
	// makes node trust the run's test CA.
	const listen = [{ address: '127.0.0.1:0' }];
	if (TLS_CERTS)
		listen.unshift({ address: '127.0.0.1:0',
			tls: { cert: TLS_CERTS.localhost.cert, key: TLS_CERTS.localhost.key } });
	return {
		listen,
		data_dir: dataDir,
		threads: 2,
		providers,
		models,
		// CLIENT_KEY is imported with this tier (see Env.start)
		tiers: { test: { requests_per_minute: 100000000, concurrent: 1000000 } },
	};
}

class Env {
	constructor(tag) {
		this.tag = tag;
	}

	async start() {
		fs.mkdirSync(LOG_DIR, { recursive: true });
		this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-sdk-'));
		const stem = path.join(LOG_DIR, `env${this.tag}`);
		const readyMs = 10000 * TIME_SCALE;
		this.mock = new Server('sluice-mock', [MOCK_BIN, '--listen', '127.0.0.1:0', '--threads', '1'],
			`${stem}.mock.log`);
		await this.mock.start(readyMs);
		this.config = baseConfig(this.mock.addr.port, path.join(this.tmp, 'data'));
		const cfg = path.join(this.tmp, 'sluice.json');
		fs.writeFileSync(cfg, JSON.stringify(this.config, null, 2));
		fs.writeFileSync(`${stem}.config.json`, JSON.stringify(this.config, null, 2));
		const imp = spawnSync(GATEWAY_BIN, ['keys', 'import', '-c', cfg, '--name', 'sdk', '--tier', 'test'],
			{ input: `${CLIENT_KEY}\n`, encoding: 'utf8' });
		if (imp.status !== 0)
			throw new Error(`sluice keys import failed: ${imp.stderr}`);
		this.gateway = new Server('sluice', [GATEWAY_BIN, 'serve', '-c', cfg, '--threads', '2'],
			`${stem}.gateway.log`);
		await this.gateway.start(readyMs);
		this.isolatedNext = { openai: 0, anthropic: 0 };
		return this;
	}

	get base() {
		if (TLS_CERTS)
			return `https://localhost:${this.gateway.addr.port}`;
		return `http://${this.gateway.addr.host}:${this.gateway.addr.port}`;
	}

	get mockBase() {
		return `http://${this.mock.addr.host}:${this.mock.addr.port}`;
	}

	problems() {
		return [this.gateway, this.mock].filter(Boolean).flatMap((s) => s.problems());
	}

	async stop() {
		const out = [];
		for (const s of [this.gateway, this.mock].filter(Boolean))
			out.push(...(await s.stop(10000 * TIME_SCALE)));
		if (this.tmp)
			fs.rmSync(this.tmp, { recursive: true, force: true });
		this.tmp = null;
		return out;
	}

	kill() {
		for (const s of [this.gateway, this.mock].filter(Boolean))
			s.kill();
	}
}

// --------------------------------------------------------------------------
// The per-test context

const SDK_TIMEOUT_MS = 10000 * TIME_SCALE;

class Context {
	constructor(env, name, sdks) {
		this.env = env;
		this.name = name;
		this.sdks = sdks;
	}

	// An OpenAI client on the gateway: no retries (a fault test must see the
	// first answer), a bounded timeout.
	openai(opts = {}) {
		const OpenAI = this.sdks.OpenAI;
		return new OpenAI({ apiKey: CLIENT_KEY, baseURL: `${this.env.base}/v1`, maxRetries: 0,
			timeout: SDK_TIMEOUT_MS, ...opts });
	}

	anthropic(opts = {}) {
		const Anthropic = this.sdks.Anthropic;
		return new Anthropic({ apiKey: CLIENT_KEY, baseURL: this.env.base, maxRetries: 0,
			timeout: SDK_TIMEOUT_MS, ...opts });
	}

	// A model id of the given format on a provider no other test uses.
	isolatedModel(format) {
		const i = this.env.isolatedNext[format]++;
		if (i >= ISOLATED)
			throw new TestError(`harness: more than ${ISOLATED} isolated ${format} models asked for`);
		return format === 'openai' ? `gpt-4o-mini-iso${i}` : `claude-sonnet-4-5-iso${i}`;
	}

	async mockStats() {
		const r = await fetch(`${this.env.mockBase}/mock/stats`, { signal: AbortSignal.timeout(5000) });
		ok(r.ok, `GET /mock/stats: ${r.status}`);
		return r.json();
	}

	// The last request the gateway sent upstream during this test:
	// {method, path, headers: {lowercase name: value}, body: parsed JSON},
	// and requests: how many upstream requests this test made.
	async upstream() {
		const st = await this.mockStats();
		const last = st.last_request;
		if (!last)
			throw new TestError('no request reached the mock upstream');
		const headers = {};
		for (const [k, v] of last.headers || [])
			headers[k.toLowerCase()] = v;
		let body = null;
		if (last.body_len > 0) {
			ok(last.body_len <= 65536, `upstream body is ${last.body_len} bytes: over the mock's 65536-byte record`);
			try {
				body = JSON.parse(last.body);
			} catch (e) {
				throw new TestError(`upstream body is not JSON (${e.message}): ${last.body.slice(0, 200)}`);
			}
		}
		// (the stats request itself is counted)
		return { method: last.method, path: last.path, headers, body, requests: st.requests - 1 };
	}

	// The upstream request, checked to have gone to the given target's route.
	async upstreamFor(target) {
		const up = await this.upstream();
		eq(up.path, target.path, 'upstream path');
		ok(up.body && typeof up.body === 'object', 'upstream body is a JSON object');
		eq(up.body.model, target.upstreamModel, 'upstream model');
		return up;
	}
}

// --------------------------------------------------------------------------
// Registry and runner

const tests = [];

// test(name, fn, {timeoutMs}): fn(t) gets a Context.
export function test(name, fn, opts = {}) {
	if (/[\s:]/.test(name))
		throw new Error(`test name "${name}" has a space or a colon`);
	if (tests.some((x) => x.name === name))
		throw new Error(`test name "${name}" is registered twice`);
	tests.push({ name, fn, timeoutMs: opts.timeoutMs || 20000 });
}

function emit(kind, name, reason = '') {
	if (TLS_CERTS)
		name = name.replace(/^sdk\./, 'sdk_tls.');
	let why = String(reason).split(/\s+/).join(' ').trim();
	if (why.length > 600)
		why = why.slice(0, 600) + '...';
	process.stdout.write(`${kind} ${name}${kind !== 'PASS' ? `: ${why}` : ''}\n`);
}

function describe(err) {
	if (err instanceof TestError)
		return err.message;
	const where = (err?.stack || '').split('\n').find((l) => /\.test\.mjs:\d+/.test(l));
	const at = where ? ` (${where.trim().replace(/^at .*\(|\)$/g, '').replace(/^at /, '').split('/').pop()})` : '';
	return `${err?.constructor?.name || 'Error'}: ${err?.message ?? String(err)}${at}`;
}

async function runOne(t, env, sdks) {
	const ctx = new Context(env, t.name, sdks);
	let timer;
	const limit = t.timeoutMs * TIME_SCALE;
	const timeout = new Promise((_, rej) => {
		timer = setTimeout(() => rej(new TestError(`timed out after ${limit / 1000}s`)), limit);
	});
	try {
		const r = await fetch(`${env.mockBase}/mock/reset`, { method: 'POST', signal: AbortSignal.timeout(5000) });
		if (!r.ok)
			throw new TestError(`POST /mock/reset: ${r.status}`);
		await Promise.race([t.fn(ctx), timeout]);
		return ['PASS', ''];
	} catch (err) {
		if (err instanceof Skip)
			return ['SKIP', err.message];
		if (process.env.SLUICE_SDK_VERBOSE)
			console.error(`--- ${t.name}\n${err?.stack || err}`);
		return ['FAIL', describe(err)];
	} finally {
		clearTimeout(timer);
	}
}

export async function main(sdks) {
	for (const k of Object.keys(process.env))
		if (/^(OPENAI|ANTHROPIC)_/.test(k))
			delete process.env[k]; // the SDKs read these: keep the tests hermetic
	const args = process.argv.slice(2);
	let pattern = process.env.SLUICE_TEST_FILTER || '';
	const k = args.indexOf('-k');
	if (k >= 0 && k + 1 < args.length)
		pattern = args[k + 1];
	const re = pattern ? new RegExp(pattern) : null;
	const selected = tests.filter((t) => !re || re.test(t.name));

	const noUring = selected.length ? ioUringMissing() : null;
	if (noUring) {
		for (const t of selected)
			emit('SKIP', t.name, `needs io_uring: ${noUring}`);
		return 0;
	}

	let failed = 0;
	let env = null;
	let envNum = 0;
	const onSignal = () => {
		env?.kill();
		process.exit(1);
	};
	process.on('SIGTERM', onSignal);
	process.on('SIGINT', onSignal);
	for (const t of selected) {
		if (!env) {
			env = new Env(`.shared${envNum++}`);
			try {
				await env.start();
			} catch (err) {
				emit('FAIL', t.name, `environment did not start: ${describe(err)}`);
				failed++;
				await env.stop();
				env = null;
				continue;
			}
		}
		let [kind, reason] = await runOne(t, env, sdks);
		const problems = env.problems();
		if (problems.length || reason.startsWith('timed out')) {
			// the servers are unusable or suspect: report it here and start
			// them again for the next tests
			problems.push(...(await env.stop()));
			env = null;
		}
		const uniq = [...new Set(problems)];
		if (uniq.length && kind !== 'FAIL') {
			kind = 'FAIL';
			reason = uniq.join('; ');
		} else if (uniq.length) {
			reason += '; ' + uniq.join('; ');
		}
		if (kind === 'FAIL')
			failed++;
		emit(kind, t.name, reason);
	}
	if (env) {
		const problems = await env.stop();
		if (problems.length) {
			failed++;
			emit('FAIL', 'sdk.gateway_clean_exit', problems.join('; '));
		} else {
			emit('PASS', 'sdk.gateway_clean_exit');
		}
	}
	return failed ? 1 : 0;
}
