"""The work of each DVC stage, one module per stage; pipelines/<stage>.py only parses its arguments,
calls one function here and prints one line."""
