"""`python -m tas_jax.flops NAME_OR_ARCH_JSON [--json] [--layers]`: the command is
`tas_jax.commands.flops`; the counter itself is `tas_jax.ops.flops`."""

if __name__ == "__main__":
  from tas_jax.commands import flops as command

  command.main()
