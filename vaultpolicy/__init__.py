"""vaultpolicy: the console command and the errors every package shares."""
