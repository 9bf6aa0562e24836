//! The `tabby` CNI plugin (Calico's `calico`): see [`tabby_cni::plugin`].

fn main() {
    tabby_cni::run::main(tabby_cni::run::Plugin::Main)
}
