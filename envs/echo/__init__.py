"""The smallest real environment, ``gymnasium.make("agentgym/Echo-v0")``: repeat a word
(``agentgym.envs.echo.env.EchoEnv``); a template for your own."""
