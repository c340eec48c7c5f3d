// The extension module specdecode._C. Importing it runs the static TORCH_LIBRARY registrations
// of every csrc/*.cpp file (each op file declares its schema with TORCH_LIBRARY_FRAGMENT and its
// CPU kernel with TORCH_LIBRARY_IMPL), so `import specdecode._C` is all Python needs to do.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
