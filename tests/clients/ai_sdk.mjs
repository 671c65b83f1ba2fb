// The Vercel AI SDK against the proxy, with the provider a user would point at another base URL:
//   --provider openai (default): createOpenAI({baseURL, apiKey}); `provider(id)` is the Responses API model
//     (POST {baseURL}/responses), the system text sent as an input message of role "system";
//   --provider anthropic: createAnthropic({baseURL, apiKey}) (POST {baseURL}/messages with x-api-key).
//   node ai_sdk.mjs generate BASE_URL PROMPT [--system TEXT]   generateText, one step
//   node ai_sdk.mjs stream BASE_URL PROMPT [--system TEXT]     streamText, one step
//   node ai_sdk.mjs tools BASE_URL PROMPT [--result TEXT] [--stream]
//     generateText (or streamText with --stream) with the tool get_weather {city} whose execute returns TEXT
//     (default "21C sunny"), stopWhen stepCountIs(2): step 1 calls the tool, the SDK runs execute, step 2 sends
//     the result back and gets the answer.
//   node ai_sdk.mjs object BASE_URL PROMPT [--stream]   generateObject (streamObject) with the schema {city, temp}:
//     prints {ai_version, requests, object, partials (streamed), finish_reason, usage}
// BASE_URL ends in /v1; the key comes from OPENAI_API_KEY or ANTHROPIC_API_KEY, else "unused". Every request the
// SDK sends is recorded by a fetch wrapper. Prints one JSON object: {ai_version, provider_version, requests: [{url,
// headers, body}], text, finish_reason, usage, response_id, reasoning, deltas, steps: [...]}.
import { parseArgs } from "node:util";
import { load, version } from "./cli_modules.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    system: { type: "string" },
    result: { type: "string", default: "21C sunny" },
    stream: { type: "boolean", default: false },
    provider: { type: "string", default: "openai" },
  },
});
const [mode, baseURL, prompt] = positionals;
const ai = await load("ai");
const PROVIDERS = {
  openai: { pkg: "@ai-sdk/openai", create: "createOpenAI", key: "OPENAI_API_KEY" },
  anthropic: { pkg: "@ai-sdk/anthropic", create: "createAnthropic", key: "ANTHROPIC_API_KEY" },
};
const chosen = PROVIDERS[values.provider];
if (!chosen) throw new Error(`unknown provider ${values.provider}: use openai or anthropic`);
const createProvider = (await load(chosen.pkg))[chosen.create];

const requests = [];
async function recordingFetch(url, init) {
  const headers = Object.fromEntries(new Headers(init?.headers ?? {}).entries());
  requests.push({ url: String(url), headers, body: init?.body ? JSON.parse(init.body) : null });
  return fetch(url, init);
}

const provider = createProvider({ baseURL, apiKey: process.env[chosen.key] || "unused", fetch: recordingFetch });
const model = provider("claude-code");
const common = { model, prompt, maxRetries: 0, ...(values.system ? { system: values.system } : {}) };

function stepSummary(step) {
  return {
    finish_reason: step.finishReason,
    text: step.text,
    tool_calls: step.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
    tool_results: step.toolResults.map((r) => ({ id: r.toolCallId, name: r.toolName, output: r.output })),
    response_id: step.response?.id ?? null,
  };
}

async function summary(result, deltas) {
  const steps = await result.steps;
  return {
    ai_version: version("ai"),
    provider_version: version(chosen.pkg),
    requests,
    text: await result.text,
    finish_reason: await result.finishReason,
    usage: await result.totalUsage,
    response_id: (await result.response).id,
    reasoning: (await result.reasoningText) ?? null,
    deltas,
    steps: steps.map(stepSummary),
    warnings: (await result.warnings) ?? [],
  };
}

async function generate() {
  return summary(await ai.generateText(common), null);
}

async function stream() {
  const errors = [];
  const result = ai.streamText({ ...common, onError: ({ error }) => errors.push(String(error)) });
  const deltas = [];
  for await (const delta of result.textStream) deltas.push(delta);
  const out = await summary(result, deltas);
  if (errors.length) out.errors = errors;
  return out;
}

async function tools() {
  const executed = [];
  const getWeather = ai.tool({
    description: "Current weather of a city",
    inputSchema: ai.jsonSchema({
      type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false,
    }),
    execute: async (input) => {
      executed.push(input);
      return values.result;
    },
  });
  const options = { ...common, tools: { get_weather: getWeather }, stopWhen: ai.stepCountIs(2) };
  let out;
  if (values.stream) {
    const errors = [];
    const result = ai.streamText({ ...options, onError: ({ error }) => errors.push(String(error)) });
    const deltas = [];
    for await (const delta of result.textStream) deltas.push(delta);
    out = await summary(result, deltas);
    if (errors.length) out.errors = errors;
  } else {
    out = await summary(await ai.generateText(options), null);
  }
  return { ...out, executed };
}

async function object() {
  const schema = ai.jsonSchema({
    type: "object", properties: { city: { type: "string" }, temp: { type: "number" } },
    required: ["city", "temp"], additionalProperties: false,
  });
  const options = { model, prompt, maxRetries: 0, schema };
  if (!values.stream) {
    const result = await ai.generateObject(options);
    return { ai_version: version("ai"), requests, object: result.object, finish_reason: result.finishReason,
             usage: result.usage };
  }
  const errors = [];
  const result = ai.streamObject({ ...options, onError: ({ error }) => errors.push(String(error)) });
  const partials = [];
  for await (const partial of result.partialObjectStream) partials.push(partial);
  const out = { ai_version: version("ai"), requests, object: await result.object, partials,
                finish_reason: await result.finishReason, usage: await result.usage };
  if (errors.length) out.errors = errors;
  return out;
}

const modes = { generate, stream, tools, object };
if (!Object.hasOwn(modes, mode)) throw new Error(`unknown mode ${mode}: use generate, stream, tools or object`);
console.log(JSON.stringify(await modes[mode]()));
