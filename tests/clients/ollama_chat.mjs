// ollama-js against the server: /api/chat whole and streamed, /api/generate.
// Usage: node ollama_chat.mjs '{"host": "http://127.0.0.1:PORT", "model": "tiny:latest", "prompt": "...", "numPredict": 4}'
// Prints one JSON object with what the client returned; tests/e2e/test_clients_npm.py asserts on it.
import { Ollama } from 'ollama';

const { host, model, prompt, numPredict } = JSON.parse(process.argv[2]);
const client = new Ollama({ host });
const messages = [{ role: 'user', content: prompt }];
const options = { num_predict: numPredict, temperature: 0 };

const whole = await client.chat({ model, messages, options });
const pieces = [];
let last = null;
for await (const part of await client.chat({ model, messages, options, stream: true })) {
  pieces.push(part.message.content);
  last = part;
}
const generated = await client.generate({ model, prompt, options });
const version = await client.version();

console.log(JSON.stringify({ whole, streamed: pieces.join(''), chunks: pieces.length, last, generated, version }));
