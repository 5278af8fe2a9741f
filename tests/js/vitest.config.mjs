// Vitest for the test-only Node packages. The conformance suite lives in
// node_modules/@durable-streams/server-conformance-tests; it runs through
// conformance.test.mjs (which imports it), so nothing under node_modules is
// collected as a test file. Test timeouts stay Vitest's defaults (5 s): the suite
// relies on them (e.g. an `offset=now` long-poll must answer 204 within 5 s).
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["*.test.mjs"],
  },
})
