// main.mjs - runs the SDK compatibility tests (see harness.mjs; tests/sdk/run).
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { main } from './harness.mjs';
import './openai.test.mjs';
import './anthropic.test.mjs';

// The Anthropic SDK warns on every request for a model on its deprecation
// list (claude-sonnet-4-5, as the configs name it): not the tests' concern.
const warn = console.warn;
console.warn = (...args) => {
	if (typeof args[0] === 'string' && /is deprecated and will reach end-of-life/.test(args[0]))
		return;
	warn(...args);
};

process.exitCode = await main({ OpenAI, Anthropic });
// the SDKs' and fetch's keep-alive sockets must not hold the process open
process.exit(process.exitCode);
