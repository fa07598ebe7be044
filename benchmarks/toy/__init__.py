"""The toy benchmark (make toy, toy-seeds, toy-ablations, toy-worlds): the pipeline of the project's own commands,
its tables and pictures. It drives the scripts as subprocesses; the library never imports it."""
