impl Repo for Pg {
    fn load<'life0, 'async_trait>(
        &'life0 self,
        id: u32,
    ) -> ::core::pin::Pin<
        Box<
            dyn ::core::future::Future<
                Output = Result<Row, DbError>,
            > + ::core::marker::Send + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            static __CACHE_SITE: ::cache_runtime::__private::Site = ::cache_runtime::__private::Site::new(
                "general",
                ::core::concat!(::core::module_path!(), "::", "load"),
                1,
                "cache_result;ok;(self,id:u32)->Result<Row,DbError>",
                0,
            );
            #[allow(unused_mut, clippy::used_underscore_binding)]
            let __cache_key = {
                let mut __cache_k = ::cache_runtime::__private::KeyBuilder::new::<
                    Row,
                >(&__CACHE_SITE);
                __cache_k.type_param::<Self>();
                __cache_k.arg(self);
                __cache_k.arg(&id);
                __cache_k.finish()
            };
            ::cache_runtime::__private::cached_result::<
                Row,
                DbError,
                _,
            >(
                    &__CACHE_SITE,
                    __cache_key,
                    {
                        #[allow(unused_imports)]
                        use ::cache_runtime::__private::{
                            L1ByClone as _, L1ByDecode as _,
                        };
                        #[allow(clippy::needless_borrow)]
                        let __cache_copier = (&::cache_runtime::__private::L1Probe::<
                            Row,
                        >::NEW)
                            .l1_copy();
                        __cache_copier
                    },
                    async move {
                        let __self = self;
                        let id = id;
                        let __ret: Result<Row, DbError> = { __self.db.load(id).await };
                        #[allow(unreachable_code)] __ret
                    },
                )
                .await
        })
    }
}
