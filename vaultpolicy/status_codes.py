"""Named exit codes (pip's status_codes, cedar's CedarExitCode)."""

SUCCESS = 0
ERROR = 1  # bad input, refused plan, failed operation
CHANGES = 2  # `diff --exit-code`: the inputs differ
DRIFT = 3  # `device status`: the device does not match the plan
USAGE = 64  # the command line itself is wrong (EX_USAGE)
INTERNAL = 70  # a bug in vaultpolicy (EX_SOFTWARE)
INTERRUPTED = 130  # Ctrl-C (SIGINT): what a shell reports for a program killed by it (128 + 2)
OUTPUT_CLOSED = 141  # stdout's reader went away (`| head`): what a shell reports for SIGPIPE (128 + 13)
