// The official OpenAI Node SDK against the proxy: one non-streamed and one streamed (include_usage) completion.
//   node openai_node.mjs BASE_URL PROMPT      (BASE_URL ends in /v1; the key comes from OPENAI_API_KEY, else "unused")
// Prints one JSON object: {sdk_version, non_stream: {...}, stream: {...}}.
import { load, version } from "./cli_modules.mjs";

const [baseURL, prompt] = process.argv.slice(2);
const { OpenAI } = await load("openai");
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || "unused", maxRetries: 0, timeout: 60_000 });
const messages = [{ role: "user", content: prompt }];

const completion = await client.chat.completions.create({ model: "claude-code", messages });
const choice = completion.choices[0];
const nonStream = {
  type: typeof completion, // the SDK hands back a string when the body is not application/json
  object: completion.object,
  id: completion.id,
  model: completion.model,
  role: choice.message.role,
  text: choice.message.content,
  finish_reason: choice.finish_reason,
  usage: completion.usage,
};

const stream = await client.chat.completions.create({
  model: "claude-code", messages, stream: true, stream_options: { include_usage: true },
});
const chunks = [];
for await (const chunk of stream) chunks.push(chunk);
const withChoices = chunks.filter((c) => c.choices.length > 0);
const last = chunks[chunks.length - 1];
const streamed = {
  chunks: chunks.length,
  objects: [...new Set(chunks.map((c) => c.object))],
  ids: [...new Set(chunks.map((c) => c.id))],
  first_role: withChoices[0]?.choices[0].delta.role ?? null,
  deltas: withChoices.map((c) => c.choices[0].delta.content).filter((t) => t),
  text: withChoices.map((c) => c.choices[0].delta.content ?? "").join(""),
  finish_reasons: withChoices.map((c) => c.choices[0].finish_reason).filter((r) => r !== null),
  usage_chunks: chunks.filter((c) => c.usage).length,
  last_choices: last.choices,
  usage: last.usage ?? null,
};

console.log(JSON.stringify({ sdk_version: version("openai"), non_stream: nonStream, stream: streamed }));
