// openai-node against the server: chat completions whole, streamed, and through the stream helper.
// Usage: node openai_chat.mjs '{"baseURL": "http://127.0.0.1:PORT/v1", "model": "tiny:latest", "prompt": "...", "maxTokens": 4}'
// Prints one JSON object with what the client returned; tests/e2e/test_clients_npm.py asserts on it.
import OpenAI from 'openai';

const { baseURL, model, prompt, maxTokens } = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
const request = { model, messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens, temperature: 0 };

const whole = await client.chat.completions.create(request);
const chunks = [];
for await (const chunk of await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } })) {
  chunks.push(chunk);
}
// The helper most apps use: it reassembles the stream into a completion.
const helper = await client.chat.completions.stream(request).finalChatCompletion();
const models = [];
for await (const m of client.models.list()) models.push(m.id);

console.log(JSON.stringify({ whole, chunks, helper, models }));
