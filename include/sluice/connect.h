/*
 * connect.h - `sluice connect`: points local tools (Claude Code, Aider, the
 * SDKs through the shell's environment, Cursor, Cline) at a gateway
 * (connect_cli.c).
 */
#ifndef SLUICE_CONNECT_H
#define SLUICE_CONNECT_H

/* argv[0] is "connect"; returns the exit status. */
int sl_connect_main(int argc, char **argv);

#endif
