// OpenClaw's own client code against the proxy, as OpenClaw 2026.9.6 uses it for a custom provider with
// api "openai-completions" (see /work/shared/docs/openai-client-contract.md §1):
//   node openclaw.mjs turn BASE_URL PROMPT [--system TEXT] [--reasoning] [--host openclaw|inert]
//     one agent turn through the managed transport of @openclaw/ai (createOpenAICompletionsTransportStreamFn,
//     what the agent runtime maps "openai-completions" to; it drives openai-node 7.15.0, a dependency of
//     @openclaw/ai). Prints {request, events, message}: the body OpenClaw sent, the event types it emitted and
//     its final assistant message (content, stopReason, usage, errorMessage).
//     --host openclaw (default) gives the library the host policy through which the OpenClaw app decides these
//     requests' compat defaults: its classification of a configured loopback base URL
//     (src/agents/provider-attribution.ts: endpointClass "local", an explicit proxy-like endpoint), so the body is
//     the app's (no store, no reasoning_effort, system role, stream usage). --host inert keeps the library's inert
//     host, as a program embedding @openclaw/ai without OpenClaw has it (it then sends store and reasoning_effort).
//   node openclaw.mjs tools BASE_URL PROMPT [--system TEXT] [--host openclaw|inert] [--result NAME=TEXT ...]
//     an agent tool cycle through the same transport, as OpenClaw's agent loop runs it: the context carries the
//     tools get_weather {city} and get_time {} (OpenClaw's tool format: name, description and TypeBox parameters,
//     TypeBox being the schema library @openclaw/ai depends on). Turn 1 goes out; while it ends with stopReason
//     "toolUse", the assistant message is appended as returned, then one toolResult message per toolCall
//     (toolCallId, toolName, content [{type:"text", text}], isError false; the text from --result NAME=TEXT, by
//     default get_weather=21C sunny and get_time=noon), and the next turn goes out (at most 4 turns).
//     Prints {openclaw_ai_version, turns: [{request, events, message}, ...]}, message as in turn mode plus the
//     toolCall blocks' parsed arguments in content.
//   node openclaw.mjs probe BASE_URL
//     the onboarding "Connection Test" (openclaw src/commands/onboard-custom*: buildOpenAiVerificationProbeRequest +
//     requestVerification, which is not in @openclaw/ai): a non-streaming POST {BASE_URL}/chat/completions of
//     {"model","messages":[{"role":"user","content":"Hi"}],"max_tokens":16,"stream":false}, judged as OpenClaw
//     judges it (2xx and a JSON content type, 30 s timeout). Prints {ok, status, content_type, body}.
// The key comes from OPENAI_API_KEY, else "local" (OpenClaw's documented marker for loopback providers).
import { parseArgs } from "node:util";
import { load, version } from "./cli_modules.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    system: { type: "string" },
    reasoning: { type: "boolean", default: false },
    host: { type: "string", default: "openclaw" },
    result: { type: "string", multiple: true, default: [] },
  },
});
const [mode, baseUrl, prompt] = positionals;
const apiKey = process.env.OPENAI_API_KEY || "local";
const MODEL_ID = "claude-code";

async function configureHost() {
  if (values.host === "openclaw") {
    const { configureAiTransportHost } = await load("@openclaw/ai");
    configureAiTransportHost({
      resolveProviderRequestCapabilities: () => ({
        endpointClass: "local",
        knownProviderFamily: "",
        supportsNativeStreamingUsageCompat: false,
        supportsOpenAICompletionsStreamingUsageCompat: false,
        usesExplicitProxyLikeEndpoint: true,
        allowsAnthropicServiceTier: false,
      }),
    });
  } else if (values.host !== "inert") {
    throw new Error(`unknown --host ${values.host}: use openclaw or inert`);
  }
}

function customModel() {
  return {
    id: MODEL_ID,
    name: "Claude Code (proxy)",
    api: "openai-completions",
    provider: "claude-code-proxy",
    baseUrl,
    reasoning: values.reasoning,
    input: ["text"],
    cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
    contextWindow: 200_000,
    maxTokens: 4096,
  };
}

// One request through the managed transport: the body sent, the event types emitted, and the final message (kept
// whole in `raw`, to be appended to the context as OpenClaw's agent loop does).
async function runTurn(model, context) {
  const { createOpenAICompletionsTransportStreamFn } = await load("@openclaw/ai/transports");
  let request = null;
  const stream = await createOpenAICompletionsTransportStreamFn()(model, context, {
    apiKey,
    onPayload: (payload) => {
      request = structuredClone(payload);
      return undefined;
    },
  });
  const events = [];
  for await (const event of stream) events.push(event.type);
  const raw = await stream.result();
  const message = {
    content: raw.content,
    stopReason: raw.stopReason,
    usage: raw.usage,
    errorMessage: raw.errorMessage ?? null,
    responseId: raw.responseId ?? null,
  };
  return { request, events, message, raw };
}

async function turn() {
  await configureHost();
  const context = {
    systemPrompt: values.system,
    messages: [{ role: "user", content: prompt, timestamp: Date.now() }],
  };
  const { request, events, message } = await runTurn(customModel(), context);
  return { openclaw_ai_version: version("@openclaw/ai"), request, events, message };
}

async function tools() {
  await configureHost();
  const { Type } = await load("typebox");
  const results = { get_weather: "21C sunny", get_time: "noon" };
  for (const pair of values.result) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`--result ${pair}: use NAME=TEXT`);
    results[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const context = {
    systemPrompt: values.system,
    messages: [{ role: "user", content: prompt, timestamp: Date.now() }],
    tools: [
      {
        name: "get_weather",
        description: "Current weather of a city",
        parameters: Type.Object({ city: Type.String({ description: "City name" }) }),
      },
      { name: "get_time", description: "The current time", parameters: Type.Object({}) },
    ],
  };
  const model = customModel();
  const turns = [];
  for (let n = 0; n < 4; n++) {
    const { raw, ...shown } = await runTurn(model, context);
    turns.push(shown);
    if (raw.stopReason !== "toolUse") break;
    context.messages.push(raw);
    for (const block of raw.content) {
      if (block.type !== "toolCall") continue;
      context.messages.push({
        role: "toolResult",
        toolCallId: block.id,
        toolName: block.name,
        content: [{ type: "text", text: results[block.name] ?? `no result configured for ${block.name}` }],
        isError: false,
        timestamp: Date.now(),
      });
    }
  }
  return { openclaw_ai_version: version("@openclaw/ai"), turns };
}

async function probe() {
  const endpoint = new URL("chat/completions", baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`).href;
  const body = { model: MODEL_ID, messages: [{ role: "user", content: "Hi" }], max_tokens: 16, stream: false };
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const contentType = response.headers.get("content-type") ?? "";
  const mediaType = contentType.split(";", 1)[0].trim().toLowerCase();
  const json = !contentType.trim() || mediaType === "application/json" || mediaType.endsWith("+json");
  const text = await response.text();
  return { ok: response.ok && json, status: response.status, content_type: contentType, body: JSON.parse(text) };
}

const modes = { turn, tools, probe };
if (!Object.hasOwn(modes, mode)) throw new Error(`unknown mode ${mode}: use turn, tools or probe`);
const result = await modes[mode]();
console.log(JSON.stringify(result));
