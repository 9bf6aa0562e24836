//! The `tabby-ipam` CNI IPAM plugin (Calico's `calico-ipam`): see
//! [`tabby_cni::ipam_plugin`].

fn main() {
    tabby_cni::run::main(tabby_cni::run::Plugin::Ipam)
}
