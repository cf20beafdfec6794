// Errno, the libc binding and StatVfs live in Core.IO: one POSIX binding for the whole program.
global using PrlFuse.Core.IO;
