"""One run from plan to stored events: runner, recording, the dashboard's child process, the watcher."""
