// The person at the browser, scripted: load the authorization URL and follow its
// redirect to latchkey's loopback listener, as approving at once would.
await fetch(process.argv[2]).catch(() => {});
