// Loads a client library from the npm prefix ./tests/run.sh installs (tests/.cli, pinned versions there).
// ES module imports resolve bare names next to the importing file only, so resolve them from that prefix instead.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const prefix = process.env.TEST_NODE_MODULES || new URL("../.cli/node_modules/", import.meta.url).pathname;
const requireFromPrefix = createRequire(prefix.endsWith("/") ? prefix : `${prefix}/`);

export async function load(specifier) {
  return import(pathToFileURL(requireFromPrefix.resolve(specifier)).href);
}

export function version(name) {
  return requireFromPrefix(`${prefix}/${name}/package.json`).version;
}
