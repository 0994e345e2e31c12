// The person at the browser for scripts/bench, scripted: load the authorization URL
// and follow its redirect to latchkey's loopback listener (the testkit's authorization
// server approves at once).
await fetch(process.argv[2]).catch(() => {});
