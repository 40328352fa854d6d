// openai.test.mjs - the official `openai` SDK through sluice, against a model
// served by an OpenAI-format provider (to_openai: pass-through) and by an
// Anthropic-format provider (to_anthropic: converted both ways).
//
// Each case asserts what the client observes (text equal to what the mock
// generates, ids, finish reasons, usage) and, through the mock's record of
// the last upstream request, what the gateway sent upstream.

import OpenAI from 'openai';
import {
	PNG_B64, TARGETS, eq, ok, positiveInt, expectError, flatText, mockText, test, Skip,
} from './harness.mjs';

const TEXT = mockText(8); // "Hello from the mock provider. The quick"
const PNG_DATA_URL = `data:image/png;base64,${PNG_B64}`;
const WEATHER_PARAMS = {
	type: 'object',
	properties: { text: { type: 'string', description: 'where' } },
	required: ['text'],
};
const WEATHER_TOOL = {
	type: 'function',
	function: { name: 'get_weather', description: 'The weather somewhere', parameters: WEATHER_PARAMS },
};

function checkUsage(u, completionTokens, what = 'usage') {
	ok(u, `${what}: missing`);
	positiveInt(u.prompt_tokens, `${what}.prompt_tokens`);
	eq(u.completion_tokens, completionTokens, `${what}.completion_tokens`);
	eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}.total_tokens`);
}

// The upstream's max tokens, whichever name an OpenAI-format body uses.
function openaiMaxTokens(body) {
	return body.max_completion_tokens ?? body.max_tokens;
}

// Upstream (Anthropic format) message content as blocks.
function blocks(content) {
	return typeof content === 'string' ? [{ type: 'text', text: content }] : content;
}

// Chunks of a `for await` stream: checks the framing every chunk stream
// must have and returns {chunks, text, finish, usage, toolCalls}.
async function collectChunks(stream) {
	const chunks = [];
	for await (const chunk of stream)
		chunks.push(chunk);
	ok(chunks.length > 0, 'the stream had no chunks');
	const id = chunks[0].id;
	ok(typeof id === 'string' && id.length > 0, 'chunk id');
	let text = '';
	const finishes = [];
	let usage = null;
	const toolCalls = [];
	let sawRole = false;
	chunks.forEach((c, i) => {
		eq(c.object, 'chat.completion.chunk', `chunk ${i}: object`);
		eq(c.id, id, `chunk ${i}: id (constant over the stream)`);
		if (c.usage) {
			ok(!usage, `chunk ${i}: a second usage chunk`);
			usage = c.usage;
			eq(c.choices, [], `chunk ${i}: the usage chunk's choices`);
			eq(i, chunks.length - 1, 'the usage chunk is the last one');
		}
		for (const ch of c.choices) {
			eq(ch.index, 0, `chunk ${i}: choice index`);
			ok(!finishes.length, `chunk ${i}: a choice after the finish_reason chunk`);
			if (ch.delta?.role) {
				eq(ch.delta.role, 'assistant', `chunk ${i}: delta.role`);
				sawRole = true;
			}
			if (ch.delta?.content)
				text += ch.delta.content;
			for (const tc of ch.delta?.tool_calls || []) {
				ok(Number.isInteger(tc.index), `chunk ${i}: tool_calls[].index`);
				const cur = toolCalls[tc.index] || (toolCalls[tc.index] = { id: '', name: '', arguments: '' });
				if (tc.id)
					cur.id += tc.id;
				if (tc.function?.name)
					cur.name += tc.function.name;
				if (tc.function?.arguments)
					cur.arguments += tc.function.arguments;
			}
			if (ch.finish_reason)
				finishes.push(ch.finish_reason);
		}
	});
	ok(sawRole, 'no chunk had delta.role "assistant"');
	eq(finishes.length, 1, 'number of chunks with a finish_reason');
	return { chunks, text, finish: finishes[0], usage, toolCalls };
}

for (const T of TARGETS) {
	const n = (name) => `sdk.openai.${name}.${T.tag}`;

	test(n('chat_create'), async (t) => {
		const client = t.openai();
		const c = await client.chat.completions.create({
			model: T.model,
			messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello' }],
			max_tokens: 100, temperature: 0.5, stop: ['END'],
		});
		eq(c.object, 'chat.completion', 'object');
		ok(typeof c.id === 'string' && c.id.length > 0, 'id');
		ok(typeof c.model === 'string' && c.model.length > 0, 'model');
		positiveInt(c.created, 'created');
		eq(c.choices.length, 1, 'number of choices');
		eq(c.choices[0].message.role, 'assistant', 'role');
		eq(c.choices[0].message.content, TEXT, 'content');
		eq(c.choices[0].finish_reason, 'stop', 'finish_reason');
		checkUsage(c.usage, 8);
		const up = await t.upstreamFor(T);
		eq(up.requests, 1, 'upstream requests');
		const b = up.body;
		if (T.format === 'openai') {
			eq(b.messages, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello' }],
				'upstream messages');
			eq(openaiMaxTokens(b), 100, 'upstream max tokens');
			eq(b.stop, ['END'], 'upstream stop');
		} else {
			eq(flatText(b.system), 'You are terse.', 'upstream system');
			eq(b.messages.length, 1, 'upstream messages (the system one moved to "system")');
			eq(b.messages[0].role, 'user', 'upstream messages[0].role');
			eq(flatText(b.messages[0].content), 'Say hello', 'upstream messages[0] text');
			eq(b.max_tokens, 100, 'upstream max_tokens');
			eq(b.stop_sequences, ['END'], 'upstream stop_sequences');
		}
		eq(b.temperature, 0.5, 'upstream temperature');
		ok(!b.stream, 'upstream stream flag unset');
	});

	test(n('chat_max_tokens'), async (t) => {
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 3,
		});
		eq(c.choices[0].message.content, mockText(3), 'content');
		eq(c.choices[0].finish_reason, 'length', 'finish_reason');
		checkUsage(c.usage, 3);
	});

	test(n('chat_default_max_tokens'), async (t) => {
		// no max_tokens: an Anthropic upstream needs one, the gateway supplies it
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }],
		});
		eq(c.choices[0].message.content, TEXT, 'content');
		const up = await t.upstreamFor(T);
		if (T.format === 'anthropic')
			positiveInt(up.body.max_tokens, 'upstream max_tokens');
		else
			eq(openaiMaxTokens(up.body), undefined, 'upstream max tokens (passed through: none)');
	});

	test(n('chat_stream_iter'), async (t) => {
		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
			stream: true, stream_options: { include_usage: true },
		});
		const r = await collectChunks(stream);
		eq(r.text, TEXT, 'streamed content');
		eq(r.finish, 'stop', 'finish_reason');
		checkUsage(r.usage, 8, 'usage chunk');
		const up = await t.upstreamFor(T);
		eq(up.body.stream, true, 'upstream stream');
	});

	test(n('chat_stream_no_usage_asked'), async (t) => {
		// a client that did not ask for usage gets no usage chunk (the gateway
		// may ask the upstream for it, for billing, and must hide it)
		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100, stream: true,
		});
		const r = await collectChunks(stream);
		eq(r.text, TEXT, 'streamed content');
		eq(r.finish, 'stop', 'finish_reason');
		eq(r.usage, null, 'usage chunk');
		for (const c of r.chunks)
			ok(c.choices.length > 0, 'a chunk without choices (a hidden usage chunk leaked?)');
	});

	test(n('chat_stream_helper'), async (t) => {
		const stream = t.openai().chat.completions.stream({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
			stream_options: { include_usage: true },
		});
		const deltas = [];
		let snapshot = '';
		stream.on('content', (delta, snap) => {
			deltas.push(delta);
			snapshot = snap;
		});
		let doneContent = null;
		stream.on('content.done', (e) => { doneContent = e.content; });
		const final = await stream.finalChatCompletion();
		eq(deltas.join(''), TEXT, "the 'content' deltas");
		ok(deltas.length >= 2, `only ${deltas.length} content delta(s): the stream was not streamed`);
		eq(snapshot, TEXT, "the last 'content' snapshot");
		eq(doneContent, TEXT, "'content.done'");
		eq(final.choices[0].message.content, TEXT, 'finalChatCompletion content');
		eq(final.choices[0].message.role, 'assistant', 'finalChatCompletion role');
		eq(final.choices[0].finish_reason, 'stop', 'finalChatCompletion finish_reason');
		checkUsage(final.usage, 8, 'finalChatCompletion usage');
		eq(await stream.finalContent(), TEXT, 'finalContent()');
	});

	test(n('tool_call_round_trip'), async (t) => {
		const client = t.openai();
		const messages = [{ role: 'user', content: 'Weather in Paris?' }];
		const c1 = await client.chat.completions.create({
			model: T.model, messages, tools: [WEATHER_TOOL], tool_choice: 'auto', max_tokens: 200,
		});
		const m1 = c1.choices[0].message;
		eq(c1.choices[0].finish_reason, 'tool_calls', 'finish_reason');
		ok(m1.content == null || m1.content === '', `content: got ${JSON.stringify(m1.content)}, want null`);
		eq(m1.tool_calls?.length, 1, 'number of tool_calls');
		const call = m1.tool_calls[0];
		ok(typeof call.id === 'string' && call.id.length > 0, 'tool call id');
		eq(call.type, 'function', 'tool call type');
		eq(call.function.name, 'get_weather', 'tool call name');
		eq(JSON.parse(call.function.arguments), { text: TEXT }, 'tool call arguments');
		checkUsage(c1.usage, 8);
		let up = await t.upstreamFor(T);
		if (T.format === 'anthropic') {
			eq(up.body.tools, [{ name: 'get_weather', description: 'The weather somewhere',
				input_schema: WEATHER_PARAMS }], 'upstream tools');
			eq(up.body.tool_choice?.type, 'auto', 'upstream tool_choice');
		} else {
			eq(up.body.tools, [WEATHER_TOOL], 'upstream tools');
		}

		// the tool's result goes back with the call's id
		messages.push(m1, { role: 'tool', tool_call_id: call.id, content: 'sunny, 21 C' });
		const c2 = await client.chat.completions.create({
			model: T.model, messages, tools: [WEATHER_TOOL], max_tokens: 200,
		});
		eq(c2.choices[0].finish_reason, 'tool_calls', 'second answer finish_reason (the mock calls again)');
		up = await t.upstreamFor(T);
		const um = up.body.messages;
		if (T.format === 'anthropic') {
			eq(um.length, 3, 'upstream messages');
			eq(um[1].role, 'assistant', 'upstream messages[1].role');
			const use = blocks(um[1].content).find((b) => b.type === 'tool_use');
			ok(use, 'upstream assistant message has a tool_use block');
			eq([use.id, use.name, use.input], [call.id, 'get_weather', { text: TEXT }], 'upstream tool_use');
			eq(um[2].role, 'user', 'upstream messages[2].role');
			const res = blocks(um[2].content).find((b) => b.type === 'tool_result');
			ok(res, 'upstream user message has a tool_result block');
			eq(res.tool_use_id, call.id, 'upstream tool_result.tool_use_id');
			eq(flatText(res.content), 'sunny, 21 C', 'upstream tool_result content');
		} else {
			eq(um[1].tool_calls[0].id, call.id, 'upstream assistant tool_calls[0].id');
			eq(um[2], { role: 'tool', tool_call_id: call.id, content: 'sunny, 21 C' }, 'upstream tool message');
		}
	});

	test(n('tool_call_stream'), async (t) => {
		const stream = t.openai().chat.completions.stream({
			model: T.model, messages: [{ role: 'user', content: 'Weather in Paris?' }],
			tools: [WEATHER_TOOL], max_tokens: 200,
		});
		const argDeltas = [];
		const done = [];
		const chunks = [];
		stream.on('chunk', (c) => chunks.push(c));
		stream.on('tool_calls.function.arguments.delta', (e) => argDeltas.push(e.arguments_delta));
		stream.on('tool_calls.function.arguments.done', (e) => done.push(e));
		const final = await stream.finalChatCompletion();
		const m = final.choices[0].message;
		eq(final.choices[0].finish_reason, 'tool_calls', 'finish_reason');
		eq(m.tool_calls?.length, 1, 'number of tool_calls');
		eq(m.tool_calls[0].function.name, 'get_weather', 'tool call name');
		ok(m.tool_calls[0].id, 'tool call id');
		eq(JSON.parse(m.tool_calls[0].function.arguments), { text: TEXT }, 'tool call arguments');
		ok(argDeltas.length >= 2, `${argDeltas.length} argument delta(s): not streamed`);
		eq(done.map((e) => [e.index, e.name]), [[0, 'get_weather']], "'arguments.done' events");
		// the id and the name come once, in the first tool_calls delta
		const tcs = chunks.flatMap((c) => c.choices.flatMap((ch) => ch.delta?.tool_calls || []));
		eq(tcs.filter((tc) => tc.id).length, 1, 'tool_calls deltas carrying an id');
		ok(tcs[0].id && tcs[0].function?.name === 'get_weather', 'the first tool_calls delta has id and name');
		for (const tc of tcs)
			eq(tc.index, 0, 'tool_calls delta index');
	});

	for (const streaming of [false, true]) {
		test(n(streaming ? 'run_tools_stream' : 'run_tools'), async (t) => {
			const calls = [];
			const runner = t.openai().chat.completions.runTools({
				model: T.model, messages: [{ role: 'user', content: 'Weather in Paris?' }], max_tokens: 200,
				...(streaming ? { stream: true } : {}),
				tools: [{
					type: 'function',
					function: {
						name: 'get_weather', description: 'The weather somewhere', parameters: WEATHER_PARAMS,
						parse: JSON.parse,
						function: (args) => {
							calls.push(args);
							return { forecast: 'sunny' };
						},
					},
				}],
			}, { maxChatCompletions: 2 });
			await runner.done();
			// the mock calls the tool whenever tools are given: two rounds
			eq(calls, [{ text: TEXT }, { text: TEXT }], 'the tool function was called with');
			const completions = runner.allChatCompletions();
			eq(completions.length, 2, 'chat completions made');
			const id0 = completions[0].choices[0].message.tool_calls?.[0]?.id;
			ok(id0, 'first tool call id');
			const up = await t.upstreamFor(T);
			eq(up.requests, 2, 'upstream requests');
			const um = up.body.messages;
			if (T.format === 'anthropic') {
				const res = um.flatMap((m) => (Array.isArray(m.content) ? m.content : []))
					.find((b) => b.type === 'tool_result');
				ok(res, 'the second upstream request has a tool_result');
				eq(res.tool_use_id, id0, 'tool_result.tool_use_id');
				eq(JSON.parse(flatText(res.content)), { forecast: 'sunny' }, 'tool_result content');
			} else {
				const tm = um.find((m) => m.role === 'tool');
				ok(tm, 'the second upstream request has a tool message');
				eq([tm.tool_call_id, JSON.parse(tm.content)], [id0, { forecast: 'sunny' }], 'tool message');
			}
		});
	}

	test(n('image_data_url'), async (t) => {
		const c = await t.openai().chat.completions.create({
			model: T.model, max_tokens: 100,
			messages: [{ role: 'user', content: [
				{ type: 'text', text: 'What is in this image?' },
				{ type: 'image_url', image_url: { url: PNG_DATA_URL } },
			] }],
		});
		eq(c.choices[0].message.content, TEXT, 'content');
		const up = await t.upstreamFor(T);
		const parts = up.body.messages[0].content;
		ok(Array.isArray(parts), 'upstream content is an array of parts');
		if (T.format === 'anthropic') {
			const img = parts.find((b) => b.type === 'image');
			ok(img, 'upstream has an image block');
			eq(img.source, { type: 'base64', media_type: 'image/png', data: PNG_B64 }, 'upstream image source');
			eq(parts.find((b) => b.type === 'text')?.text, 'What is in this image?', 'upstream text block');
		} else {
			eq(parts[1], { type: 'image_url', image_url: { url: PNG_DATA_URL } }, 'upstream image part');
		}
	});

	test(n('reasoning_effort'), async (t) => {
		// the mock generates no reasoning: this checks the request mapping
		// (reasoning_effort -> Anthropic thinking) and that the answer still reads
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Think, then say hello' }],
			reasoning_effort: 'low', max_completion_tokens: 4000,
		});
		eq(c.choices[0].message.content, TEXT, 'content');
		eq(c.choices[0].finish_reason, 'stop', 'finish_reason');
		const up = await t.upstreamFor(T);
		if (T.format === 'anthropic') {
			eq(up.body.thinking?.type, 'enabled', 'upstream thinking.type');
			const budget = up.body.thinking.budget_tokens;
			ok(Number.isInteger(budget) && budget >= 1024 && budget < up.body.max_tokens,
				`upstream thinking.budget_tokens ${budget}: want an integer >= 1024 and < max_tokens ${up.body.max_tokens}`);
		} else {
			eq(up.body.reasoning_effort, 'low', 'upstream reasoning_effort');
		}
	});

	test(n('responses_create'), async (t) => {
		const r = await t.openai().responses.create({
			model: T.model, instructions: 'You are terse.', input: 'Say hello', max_output_tokens: 100,
		});
		eq(r.object, 'response', 'object');
		ok(typeof r.id === 'string' && r.id.length > 0, 'id');
		eq(r.status, 'completed', 'status');
		eq(r.output_text, TEXT, 'output_text');
		const msg = r.output.find((o) => o.type === 'message');
		ok(msg, 'an output item of type message');
		eq(msg.role, 'assistant', 'message role');
		eq(msg.content.map((p) => [p.type, p.text]), [['output_text', TEXT]], 'message content');
		positiveInt(r.usage?.input_tokens, 'usage.input_tokens');
		eq(r.usage.output_tokens, 8, 'usage.output_tokens');
		eq(r.usage.total_tokens, r.usage.input_tokens + 8, 'usage.total_tokens');
		const up = await t.upstreamFor(T);
		const b = up.body;
		if (T.format === 'anthropic') {
			eq(flatText(b.system), 'You are terse.', 'upstream system');
			eq(b.max_tokens, 100, 'upstream max_tokens');
		} else {
			ok(['system', 'developer'].includes(b.messages[0].role), 'upstream messages[0] is system/developer');
			eq(flatText(b.messages[0].content), 'You are terse.', 'upstream instructions');
			eq(openaiMaxTokens(b), 100, 'upstream max tokens');
		}
		eq(b.messages.at(-1).role, 'user', 'upstream last message role');
		eq(flatText(b.messages.at(-1).content), 'Say hello', 'upstream input');
	});

	test(n('responses_stream_events'), async (t) => {
		const stream = await t.openai().responses.create({
			model: T.model, input: [{ role: 'user', content: 'Say hello' }], max_output_tokens: 100, stream: true,
		});
		const events = [];
		for await (const e of stream)
			events.push(e);
		const types = events.map((e) => e.type);
		eq(types[0], 'response.created', 'first event');
		eq(types.at(-1), 'response.completed', 'last event');
		for (const want of ['response.output_item.added', 'response.content_part.added',
			'response.output_text.delta', 'response.output_text.done', 'response.content_part.done',
			'response.output_item.done'])
			ok(types.includes(want), `no ${want} event (got ${[...new Set(types)].join(' ')})`);
		const order = (ty) => types.indexOf(ty);
		ok(order('response.output_item.added') < order('response.content_part.added') &&
		   order('response.content_part.added') < order('response.output_text.delta') &&
		   types.lastIndexOf('response.output_text.delta') < order('response.output_text.done') &&
		   order('response.output_text.done') < order('response.content_part.done') &&
		   order('response.content_part.done') < order('response.output_item.done') &&
		   order('response.output_item.done') < order('response.completed'),
		`events out of order: ${types.join(' ')}`);
		const deltas = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta);
		eq(deltas.join(''), TEXT, 'output_text deltas');
		eq(events.find((e) => e.type === 'response.output_text.done').text, TEXT, 'output_text.done text');
		const seq = events.map((e) => e.sequence_number);
		ok(seq.every((s, i) => Number.isInteger(s) && (i === 0 || s > seq[i - 1])),
			`sequence_number not increasing: ${seq.join(',')}`);
		const done = events.at(-1).response;
		eq(done.status, 'completed', 'completed response status');
		eq(done.output_text ?? flatText(done.output?.[0]?.content), TEXT, 'completed response text');
		positiveInt(done.usage?.input_tokens, 'completed usage.input_tokens');
		eq(done.usage.output_tokens, 8, 'completed usage.output_tokens');
		const up = await t.upstreamFor(T);
		eq(up.body.stream, true, 'upstream stream');
	});

	test(n('responses_stream_helper'), async (t) => {
		const stream = t.openai().responses.stream({
			model: T.model, input: 'Say hello', max_output_tokens: 100,
		});
		const deltas = [];
		stream.on('response.output_text.delta', (e) => deltas.push(e.delta));
		const final = await stream.finalResponse();
		eq(deltas.join(''), TEXT, 'output_text deltas');
		eq(final.output_text, TEXT, 'finalResponse().output_text');
		eq(final.status, 'completed', 'finalResponse().status');
	});

	test(n('responses_function_call'), async (t) => {
		const r = await t.openai().responses.create({
			model: T.model, input: 'Weather in Paris?', max_output_tokens: 200,
			tools: [{ type: 'function', name: 'get_weather', description: 'The weather somewhere',
				parameters: WEATHER_PARAMS, strict: false }],
		});
		const fc = r.output.find((o) => o.type === 'function_call');
		ok(fc, `no function_call output item (got ${r.output.map((o) => o.type).join(',')})`);
		eq(fc.name, 'get_weather', 'function_call name');
		ok(fc.call_id, 'function_call call_id');
		eq(JSON.parse(fc.arguments), { text: TEXT }, 'function_call arguments');
		const up = await t.upstreamFor(T);
		const names = (up.body.tools || []).map((x) => x.name ?? x.function?.name);
		eq(names, ['get_weather'], 'upstream tool names');
	});

	test(n('error_400_upstream'), async (t) => {
		const err = await expectError(() => t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
		}, { headers: { 'x-mock-status': '400' } }), OpenAI.BadRequestError, 400);
		ok(typeof err.error?.message === 'string' && err.error.message.length > 0,
			`error body in the OpenAI shape {"error":{"message":..}}: got ${JSON.stringify(err.error)}`);
	});

	test(n('error_429'), async (t) => {
		const err = await expectError(() => t.openai().chat.completions.create({
			model: t.isolatedModel(T.format), messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
		}, { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '7' } }), OpenAI.RateLimitError, 429);
		ok(typeof err.error?.message === 'string' && err.error.message.length > 0,
			`error body in the OpenAI shape: got ${JSON.stringify(err.error)}`);
		eq(err.headers?.get('retry-after'), '7', 'Retry-After');
	});

	test(n('error_429_stream'), async (t) => {
		const err = await expectError(() => t.openai().chat.completions.create({
			model: t.isolatedModel(T.format), messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
			stream: true,
		}, { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '3' } }), OpenAI.RateLimitError, 429);
		ok(typeof err.error?.message === 'string', `error body in the OpenAI shape: got ${JSON.stringify(err.error)}`);
		eq(err.headers?.get('retry-after'), '3', 'Retry-After');
	});
}

test('sdk.openai.error_404_unknown_model', async (t) => {
	const err = await expectError(() => t.openai().chat.completions.create({
		model: 'no-such-model', messages: [{ role: 'user', content: 'Say hello' }],
	}), OpenAI.NotFoundError, 404);
	ok(/no-such-model/.test(err.error?.message || ''), `error message names the model: ${JSON.stringify(err.error)}`);
	ok(err.requestID, 'x-request-id on the error (err.requestID)');
	const up = await t.mockStats();
	eq(up.last_request, null, 'nothing went upstream');
});

test('sdk.openai.error_404_unknown_model_stream', async (t) => {
	await expectError(() => t.openai().chat.completions.create({
		model: 'no-such-model', messages: [{ role: 'user', content: 'Say hello' }], stream: true,
	}), OpenAI.NotFoundError, 404);
});

test('sdk.openai.error_400_bad_model_type', async (t) => {
	const err = await expectError(() => t.openai().chat.completions.create({
		model: 42, messages: [{ role: 'user', content: 'Say hello' }],
	}), OpenAI.BadRequestError, 400);
	ok(typeof err.error?.message === 'string', `error body in the OpenAI shape: ${JSON.stringify(err.error)}`);
});

test('sdk.openai.error_401_bad_key', async (t) => {
	const client = t.openai({ apiKey: 'sk-sluice-not-a-key-0000' });
	let err;
	try {
		await client.chat.completions.create({
			model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 10,
		});
	} catch (e) {
		err = e;
	}
	ok(err, 'the gateway accepted an unknown client key');
	ok(err instanceof OpenAI.AuthenticationError,
		`threw ${err.constructor.name} (status ${err.status}), want AuthenticationError 401`);
	eq(err.status, 401, 'status');
});

test('sdk.openai.models_list', async (t) => {
	const models = [];
	for await (const m of t.openai().models.list())
		models.push(m);
	const ids = models.map((m) => m.id);
	for (const want of ['gpt-4o-mini', 'claude-sonnet-4-5'])
		ok(ids.includes(want), `${want} not listed (got ${ids.slice(0, 8).join(',')}...)`);
	ok(!ids.includes('claude-sonnet-4-5-20250929'), 'an alias is listed as a model of its own');
	for (const m of models)
		eq(m.object, 'model', `${m.id}: object`);
	const claude = models.find((m) => m.id === 'claude-sonnet-4-5');
	eq(claude.pricing?.input, '3.00', 'claude-sonnet-4-5 pricing.input');
	eq(claude.pricing?.output, '15.00', 'claude-sonnet-4-5 pricing.output');
	eq(claude.context_window, 200000, 'claude-sonnet-4-5 context_window');
});

test('sdk.openai.models_retrieve', async (t) => {
	const client = t.openai();
	const m = await client.models.retrieve('gpt-4o-mini');
	eq([m.id, m.object], ['gpt-4o-mini', 'model'], 'gpt-4o-mini');
	const a = await client.models.retrieve('claude-sonnet-4-5-20250929');
	eq(a.id, 'claude-sonnet-4-5', 'an alias resolves to its model');
	ok((a.aliases || []).includes('claude-sonnet-4-5-20250929'), 'aliases listed');
	await expectError(() => client.models.retrieve('no-such-model'), OpenAI.NotFoundError, 404, 'unknown model');
});

// --------------------------------------------------------------------------
// Reasoning, parallel tool calls, cached tokens and stop sequences, with the
// mock's x-mock-thinking / x-mock-parallel-tools / x-mock-cache-* headers and
// its stop-sequence handling (tools/mock.md).

const THINKING = 'Let me think about this.'; // the mock's reasoning text (5 deltas)
const TIME_TOOL = {
	type: 'function',
	function: { name: 'get_time', description: 'The time somewhere', parameters: WEATHER_PARAMS },
};
// The mock's words n words from word k on: tool call k's arguments text.
const words = (n, k = 0) => mockText(n + k).slice(mockText(k).length);

// The upstream request body's size decides the mock's input token count.
async function upstreamInputTokens(t) {
	const st = await t.mockStats();
	return Math.max(Math.floor(st.last_request.body_len / 4), 1);
}

for (const T of TARGETS) {
	const n = (name) => `sdk.openai.${name}.${T.tag}`;

	test(n('reasoning_content'), async (t) => {
		// reasoning_effort makes the upstream think: an Anthropic thinking block
		// arrives as message.reasoning_content, as reasoning-capable hosts send it
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Think, then say hello' }],
			reasoning_effort: 'low', max_completion_tokens: 4000,
		});
		const m = c.choices[0].message;
		eq(m.reasoning_content, THINKING, 'message.reasoning_content');
		eq(m.content, TEXT, 'content');
		eq(c.choices[0].finish_reason, 'stop', 'finish_reason');
		checkUsage(c.usage, 5 + 8); // the thinking is output too
	});

	test(n('reasoning_content_stream'), async (t) => {
		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Think, then say hello' }],
			reasoning_effort: 'low', max_completion_tokens: 4000, stream: true,
			stream_options: { include_usage: true },
		});
		const r = await collectChunks(stream);
		const kinds = [];
		let reasoning = '';
		for (const c of r.chunks)
			for (const ch of c.choices) {
				if (ch.delta?.reasoning_content) {
					reasoning += ch.delta.reasoning_content;
					kinds.push('r');
				}
				if (ch.delta?.content)
					kinds.push('c');
			}
		eq(reasoning, THINKING, 'reasoning_content deltas');
		ok(kinds.filter((k) => k === 'r').length >= 2, `reasoning not streamed (${kinds.join('')})`);
		ok(kinds.join('').startsWith('r') && !/c.*r/.test(kinds.join('')),
			`reasoning deltas must all come before the content deltas: ${kinds.join('')}`);
		eq(r.text, TEXT, 'streamed content');
		eq(r.finish, 'stop', 'finish_reason');
		checkUsage(r.usage, 5 + 8, 'usage chunk');
	});

	test(n('parallel_tool_calls'), async (t) => {
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Weather and time in Paris?' }],
			tools: [WEATHER_TOOL, TIME_TOOL], max_tokens: 200,
		}, { headers: { 'x-mock-parallel-tools': '2' } });
		const m = c.choices[0].message;
		eq(c.choices[0].finish_reason, 'tool_calls', 'finish_reason');
		eq(m.tool_calls?.length, 2, 'number of tool_calls');
		eq(m.tool_calls.map((tc) => [tc.type, tc.function.name]), [['function', 'get_weather'], ['function', 'get_time']],
			'tool calls');
		eq(m.tool_calls.map((tc) => JSON.parse(tc.function.arguments)), [{ text: words(8) }, { text: words(8, 1) }],
			'tool call arguments');
		ok(m.tool_calls.every((tc) => typeof tc.id === 'string' && tc.id.length > 0), 'tool call ids');
		ok(m.tool_calls[0].id !== m.tool_calls[1].id, 'distinct tool call ids');
		checkUsage(c.usage, 16);
	});

	test(n('parallel_tool_calls_stream'), async (t) => {
		// an OpenAI-format upstream interleaves the two calls' argument
		// fragments; each call's first delta carries its id and name
		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Weather and time in Paris?' }],
			tools: [WEATHER_TOOL, TIME_TOOL], max_tokens: 200, stream: true,
		}, { headers: { 'x-mock-parallel-tools': '2' } });
		const r = await collectChunks(stream);
		eq(r.finish, 'tool_calls', 'finish_reason');
		eq(r.toolCalls.length, 2, 'tool calls (by delta index)');
		eq(r.toolCalls.map((tc) => tc.name), ['get_weather', 'get_time'], 'tool call names');
		eq(r.toolCalls.map((tc) => JSON.parse(tc.arguments)), [{ text: words(8) }, { text: words(8, 1) }],
			'tool call arguments');
		ok(r.toolCalls[0].id && r.toolCalls[1].id && r.toolCalls[0].id !== r.toolCalls[1].id, 'distinct ids');
		const tcs = r.chunks.flatMap((c) => c.choices.flatMap((ch) => ch.delta?.tool_calls || []));
		for (const idx of [0, 1]) {
			const mine = tcs.filter((tc) => tc.index === idx);
			ok(mine[0].id && mine[0].function?.name, `call ${idx}: its first delta has no id and name`);
			eq(mine.filter((tc) => tc.id).length, 1, `call ${idx}: deltas carrying an id`);
			ok(mine.length >= 2, `call ${idx}: arguments not streamed`);
		}
		eq(r.text, '', 'no content');
	});

	test(n('parallel_tool_results_round_trip'), async (t) => {
		// both results go back, each with its call's id, once
		const client = t.openai();
		const messages = [{ role: 'user', content: 'Weather and time in Paris?' }];
		const c1 = await client.chat.completions.create({
			model: T.model, messages, tools: [WEATHER_TOOL, TIME_TOOL], max_tokens: 200,
		}, { headers: { 'x-mock-parallel-tools': '2' } });
		const calls = c1.choices[0].message.tool_calls;
		eq(calls?.length, 2, 'number of tool_calls');
		messages.push(c1.choices[0].message,
			{ role: 'tool', tool_call_id: calls[0].id, content: 'sunny' },
			{ role: 'tool', tool_call_id: calls[1].id, content: '14:00' });
		const c2 = await client.chat.completions.create({ model: T.model, messages, max_tokens: 200 });
		eq(c2.choices[0].message.content, TEXT, 'second answer');
		const up = await t.upstreamFor(T);
		const um = up.body.messages;
		if (T.format === 'anthropic') {
			eq(um.length, 3, `upstream messages (${um.map((m) => m.role).join(',')})`);
			const uses = blocks(um[1].content).filter((b) => b.type === 'tool_use');
			eq(uses.map((b) => [b.id, b.name]), [[calls[0].id, 'get_weather'], [calls[1].id, 'get_time']],
				'upstream tool_use blocks');
			eq(um[2].role, 'user', 'upstream messages[2].role');
			const res = blocks(um[2].content).filter((b) => b.type === 'tool_result');
			eq(res.map((b) => [b.tool_use_id, flatText(b.content)]), [[calls[0].id, 'sunny'], [calls[1].id, '14:00']],
				'upstream tool_result blocks (both, in order, once)');
		} else {
			eq(um.length, 4, 'upstream messages');
			eq(um[1].tool_calls.map((tc) => tc.id), calls.map((tc) => tc.id), 'upstream tool_calls ids');
			eq(um.slice(2), [{ role: 'tool', tool_call_id: calls[0].id, content: 'sunny' },
				{ role: 'tool', tool_call_id: calls[1].id, content: '14:00' }], 'upstream tool messages');
		}
	});

	test(n('cached_tokens'), async (t) => {
		// the upstream read 100 prompt tokens from its cache (and an Anthropic
		// one wrote 50): prompt_tokens counts every input token, cached_tokens
		// the cached ones
		const headers = { 'x-mock-cache-read': '100', 'x-mock-cache-write': '50' };
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100,
		}, { headers });
		const base = await upstreamInputTokens(t);
		const total = base + 100 + (T.format === 'anthropic' ? 50 : 0);
		checkUsage(c.usage, 8);
		eq(c.usage.prompt_tokens_details?.cached_tokens, 100, 'usage.prompt_tokens_details.cached_tokens');
		eq(c.usage.prompt_tokens, total, 'usage.prompt_tokens (uncached + cache reads + cache writes)');

		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100, stream: true,
			stream_options: { include_usage: true },
		}, { headers });
		const r = await collectChunks(stream);
		const sbase = await upstreamInputTokens(t);
		checkUsage(r.usage, 8, 'usage chunk');
		eq(r.usage.prompt_tokens_details?.cached_tokens, 100, 'usage chunk cached_tokens');
		eq(r.usage.prompt_tokens, sbase + 100 + (T.format === 'anthropic' ? 50 : 0), 'usage chunk prompt_tokens');
	});

	test(n('stop_sequence'), async (t) => {
		// the mock stops before a word equal to a stop sequence
		const c = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100, stop: ['mock'],
		});
		eq(c.choices[0].message.content, mockText(3), 'content');
		eq(c.choices[0].finish_reason, 'stop', 'finish_reason');
		checkUsage(c.usage, 3);
		const stream = await t.openai().chat.completions.create({
			model: T.model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 100, stop: 'mock',
			stream: true,
		});
		const r = await collectChunks(stream);
		eq(r.text, mockText(3), 'streamed content');
		eq(r.finish, 'stop', 'streamed finish_reason');
	});
}
